//! Validation of declared actions when the config is read: each mistake is
//! refused with a message naming the action, the parameter and the problem.

use super::*;

/// An action `a` with `argv` and a parameter `p` of `param` (TOML lines).
fn with_param(argv: &str, param: &str) -> String {
    format!("[actions.a]\nargv = {argv}\n[actions.a.params.p]\n{param}\n")
}

#[test]
fn mistakes_in_actions_are_named() {
    let one = r#"["/bin/x", "{p}"]"#;
    let cases: Vec<(String, &str)> = vec![
        (
            "[actions.Create]\nargv = [\"x\"]".into(),
            "action \"Create\": invalid action name: use [a-z][a-z0-9_]*",
        ),
        (
            "[actions.a-b]\nargv = [\"x\"]".into(),
            "action \"a-b\": invalid action name",
        ),
        (
            "[actions.a]\nargv = []".into(),
            "action \"a\": argv is empty",
        ),
        (
            "[actions.a]\ndescription = \"x\"".into(),
            "missing field `argv`",
        ),
        (
            "[actions.a]\nargv = [\"x\"]\nargvs = []".into(),
            "unknown field `argvs`",
        ),
        (
            with_param(r#"["{p}"]"#, "type = \"string\""),
            "action \"a\": argv[0] must be a literal program",
        ),
        (
            "[actions.a]\nargv = [\"/bin/{{x}}\"]".into(),
            "argv[0] must be a literal program",
        ),
        (
            "[actions.a]\nargv = [\"bin/x\"]".into(),
            "action \"a\": argv[0] \"bin/x\" must be an absolute path or a bare program name",
        ),
        (
            "[actions.a]\nargv = [\"./x\"]".into(),
            "must be an absolute path or a bare program name",
        ),
        (
            "[actions.a]\nargv = [\"\"]".into(),
            "must be an absolute path or a bare program name",
        ),
        (
            "[actions.a]\nargv = [\"x\", \"{nope}\"]".into(),
            "action \"a\": argv[1] refers to {nope}, which is not a declared parameter",
        ),
        (
            with_param(r#"["x", "--p={p"]"#, "type = \"string\""),
            "action \"a\": argv[1] has an unclosed \"{\"",
        ),
        (
            with_param(r#"["x", "{p}}"]"#, "type = \"string\""),
            "action \"a\": argv[1] has an unmatched \"}\"",
        ),
        (
            with_param(r#"["x", "{P}"]"#, "type = \"string\""),
            "argv[1] has an invalid placeholder {P}",
        ),
        (
            with_param(r#"["x"]"#, "type = \"string\""),
            "action \"a\": parameter \"p\" is not used in argv",
        ),
        (
            with_param(r#"["x", "{p}"]"#, "type = \"string\"\ntimeout = \"1s\""),
            "unknown field `timeout`",
        ),
        (
            "[actions.a]\nargv = [\"x\"]\ntimeout = \"soon\"".into(),
            "action \"a\": timeout \"soon\" is not a duration",
        ),
        (
            "[actions.a]\nargv = [\"x\"]\ntimeout = \"0s\"".into(),
            "action \"a\": timeout must be more than zero",
        ),
        (
            "[actions.a]\nargv = [\"x\", \"{P}\"]\n[actions.a.params.P]\ntype = \"string\"".into(),
            "action \"a\": parameter \"P\": invalid parameter name",
        ),
        (
            with_param(one, "type = \"float\""),
            "unknown variant `float`",
        ),
        (
            with_param(one, "description = \"no type\""),
            "missing field `type`",
        ),
        (
            with_param(one, "type = \"string\"\npattern = \"[a-z\""),
            "action \"a\": parameter \"p\": pattern \"[a-z\" does not compile: unclosed character class",
        ),
        (
            with_param(one, "type = \"string\"\nmax_len = 0"),
            "parameter \"p\": max_len must be at least 1",
        ),
        (
            with_param(one, "type = \"string\"\nmin = 1"),
            "parameter \"p\": \"min\" does not apply to type string",
        ),
        (
            with_param(one, "type = \"hostname\"\nroot = \"/srv\""),
            "parameter \"p\": \"root\" does not apply to type hostname",
        ),
        (
            with_param(one, "type = \"int\"\nmin = 5\nmax = 1"),
            "parameter \"p\": min (5) is greater than max (1)",
        ),
        (
            with_param(one, "type = \"enum\"\nvalues = []"),
            "parameter \"p\": an enum needs at least one value",
        ),
        (
            with_param(one, "type = \"enum\""),
            "parameter \"p\": an enum needs at least one value",
        ),
        (
            with_param(one, "type = \"path\""),
            "parameter \"p\": a path needs \"root\"",
        ),
        (
            with_param(one, "type = \"path\"\nroot = \"var/backups\""),
            "parameter \"p\": root \"var/backups\" is not an absolute path",
        ),
        (
            with_param(one, "type = \"path\"\nroot = \"/var/../etc\""),
            "parameter \"p\": root \"/var/../etc\" has a \"..\" component",
        ),
        (
            with_param(one, "type = \"int\"\nmax = 10\ndefault = 11"),
            "parameter \"p\": default \"11\" is out of range (int <= 10)",
        ),
        (
            with_param(one, "type = \"bool\"\ndefault = \"yes\""),
            "parameter \"p\": default \"yes\" is not true or false",
        ),
        (
            with_param(
                one,
                "type = \"string\"\npattern = \"[a-z]+\"\ndefault = \"A\"",
            ),
            "parameter \"p\": default \"A\" does not match [a-z]+",
        ),
        (
            with_param(one, "type = \"int\"\ndefault = 1.5"),
            "invalid type: floating point",
        ),
        (
            with_param(one, "type = \"bool\"\ndefault = true\nrequired = true"),
            "parameter \"p\": has a default, so it cannot be required",
        ),
        (
            with_param(one, "type = \"bool\"\nrequired = false"),
            "parameter \"p\": is optional (required = false) but has no default",
        ),
    ];
    for (text, expected) in cases {
        let error = config_error(&text);
        assert!(error.contains(expected), "{text}\n=> {error}");
    }
}

#[test]
fn defaults_may_be_strings_or_native_values() {
    let set = set(r#"
        [actions.a]
        argv = ["x", "{n}", "{b}", "{s}"]
        [actions.a.params.n]
        type = "int"
        default = 3
        [actions.a.params.b]
        type = "bool"
        default = "false"
        [actions.a.params.s]
        type = "string"
        default = "hello world"
        required = false
    "#);
    let resolved = resolve(&set, "a", &[]).unwrap();
    assert_eq!(resolved.argv, ["x", "3", "false", "hello world"]);
}

#[test]
fn braces_can_be_escaped_and_a_program_name_is_found_in_path() {
    let set = set(r#"
        [actions.json]
        argv = ["printf", "{{\"name\":\"{name}\"}}"]
        [actions.json.params.name]
        type = "enum"
        values = ["a"]
        required = true
    "#);
    let resolved = resolve(&set, "json", &[("name", "a")]).unwrap();
    assert_eq!(resolved.argv, ["printf", "{\"name\":\"a\"}"]);
}

#[test]
fn an_action_may_take_no_parameters() {
    let set = set("[actions.reload]\nargv = [\"/usr/sbin/nginx\", \"-s\", \"reload\"]");
    assert_eq!(
        resolve(&set, "reload", &[]).unwrap().argv,
        ["/usr/sbin/nginx", "-s", "reload"]
    );
    let refusal = resolve(&set, "reload", &[("x", "1")]).unwrap_err();
    assert_eq!(
        refusal.message,
        "unknown parameter \"x\" (reload takes: no parameters)"
    );
}
