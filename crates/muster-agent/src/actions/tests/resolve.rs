//! Calls against the declared actions: exact argument vectors for valid calls,
//! and refusals, with the parameter named, for everything else.

use std::time::Duration;

use muster_proto::actions::{ParamInfo, ParamKind};

use super::*;

/// An action, the parameters of a call, and the argument vector it makes.
type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a [&'a str]);

#[test]
fn valid_calls_produce_the_exact_argv() {
    let set = set(ACTIONS);
    let cases: &[Case<'_>] = &[
        (
            "create_site",
            &[("domain", "example.com")],
            &[
                "/opt/sites/create-site.sh",
                "--domain=example.com",
                "--cache=true",
            ],
        ),
        (
            "create_site",
            &[("domain", "Shop-1.example.co.uk"), ("cache", "false")],
            &[
                "/opt/sites/create-site.sh",
                "--domain=Shop-1.example.co.uk",
                "--cache=false",
            ],
        ),
        (
            "scale",
            &[("replicas", "10")],
            &["/usr/bin/scale", "--replicas", "10"],
        ),
        (
            "scale",
            &[("replicas", "007")],
            &["/usr/bin/scale", "--replicas", "7"],
        ),
        (
            "tail",
            &[("name", "nginx_access-2")],
            &["tail", "-n", "20", "--", "/var/log/nginx_access-2.log"],
        ),
        (
            "tail",
            &[("name", "x"), ("lines", "5")],
            &["tail", "-n", "5", "--", "/var/log/x.log"],
        ),
        (
            "restart",
            &[("service", "php-fpm")],
            &["systemctl", "restart", "php-fpm"],
        ),
        (
            "backup",
            &[("dir", "site1/db.sql")],
            &["/usr/local/bin/backup", "--to", "/srv/www/site1/db.sql"],
        ),
        (
            "backup",
            &[("dir", "/srv/www/./a//b/")],
            &["/usr/local/bin/backup", "--to", "/srv/www/a/b"],
        ),
        (
            "backup",
            &[("dir", "./a")],
            &["/usr/local/bin/backup", "--to", "/srv/www/a"],
        ),
    ];
    for (name, params, expected) in cases {
        let resolved = resolve(&set, name, params).unwrap_or_else(|e| panic!("{name}: {e:?}"));
        assert_eq!(argv(resolved), *expected, "{name} {params:?}");
    }
}

#[test]
fn a_value_with_shell_syntax_stays_one_literal_argument() {
    let set = set(ACTIONS);
    let text = "x; rm -rf / $(id) `id` | a b > c 'q' \"d\" \\ *";
    let resolved = resolve(&set, "echo", &[("text", text)]).unwrap();
    assert_eq!(resolved.argv, ["/bin/echo", text]);
}

#[test]
fn the_action_timeout_is_resolved_with_the_argv() {
    let set = set(ACTIONS);
    let resolved = resolve(&set, "create_site", &[("domain", "a.example")]).unwrap();
    assert_eq!(resolved.timeout, Some(Duration::from_secs(600)));
    let resolved = resolve(&set, "restart", &[("service", "nginx")]).unwrap();
    assert_eq!(resolved.timeout, None);
}

#[test]
fn an_unknown_action_lists_the_declared_ones() {
    let refusal = resolve(&set(ACTIONS), "nope", &[]).unwrap_err();
    assert_eq!(refusal.code, ErrorCode::UnknownAction);
    assert_eq!(
        refusal.message,
        "no action \"nope\" on this agent; it declares: backup, create_site, echo, restart, scale, tail"
    );
    let refusal = ActionSet::default()
        .resolve(&call("nope", &[]))
        .unwrap_err();
    assert_eq!(refusal.code, ErrorCode::UnknownAction);
    assert_eq!(
        refusal.message,
        "no action \"nope\" on this agent; it declares: none"
    );
}

#[test]
fn unknown_and_missing_parameters_are_named() {
    let set = set(ACTIONS);
    let refusal = resolve(&set, "create_site", &[("domain", "a.b"), ("foo", "1")]).unwrap_err();
    assert_eq!(refusal.code, ErrorCode::InvalidParams);
    assert_eq!(
        refusal.message,
        "unknown parameter \"foo\" (create_site takes: domain, cache)"
    );
    let refusal = resolve(&set, "create_site", &[("cache", "true")]).unwrap_err();
    assert_eq!(refusal.code, ErrorCode::InvalidParams);
    assert_eq!(
        refusal.message,
        "parameter \"domain\" is required (hostname)"
    );
    let refusal = resolve(&set, "scale", &[]).unwrap_err();
    assert_eq!(
        refusal.message,
        "parameter \"replicas\" is required (int 1..=10)"
    );
}

#[test]
fn the_message_names_the_parameter_the_value_and_the_rule() {
    let message = refused(&set(ACTIONS), "create_site", "domain", "x; rm -rf /");
    assert_eq!(
        message,
        "parameter \"domain\": \"x; rm -rf /\" is not a valid hostname"
    );
}

#[test]
fn injection_attempts_are_refused() {
    let set = set(ACTIONS);
    let long = "a".repeat(300);
    let long_label = format!("{}.com", "a".repeat(64));
    let long_host = ["abcdefghi"; 26].join(".");
    let cases: &[(&str, &str, &str, &str)] = &[
        (
            "create_site",
            "domain",
            "x; rm -rf /",
            "is not a valid hostname",
        ),
        ("create_site", "domain", "$(id)", "is not a valid hostname"),
        ("create_site", "domain", "`id`", "is not a valid hostname"),
        ("create_site", "domain", "a b", "is not a valid hostname"),
        ("create_site", "domain", "-rf", "is not a valid hostname"),
        ("create_site", "domain", "--help", "is not a valid hostname"),
        (
            "create_site",
            "domain",
            "ex\u{430}mple.com",
            "is not a valid hostname",
        ),
        (
            "create_site",
            "domain",
            "example.com.",
            "is not a valid hostname",
        ),
        ("create_site", "domain", "a..b", "is not a valid hostname"),
        ("create_site", "domain", "a-.com", "is not a valid hostname"),
        (
            "create_site",
            "domain",
            "a_b.com",
            "is not a valid hostname",
        ),
        ("create_site", "domain", "", "is not a valid hostname"),
        (
            "create_site",
            "domain",
            &long_label,
            "is not a valid hostname",
        ),
        (
            "create_site",
            "domain",
            &long_host,
            "is not a valid hostname",
        ),
        (
            "create_site",
            "domain",
            "foo\nbar",
            "contains a control character",
        ),
        (
            "create_site",
            "domain",
            "foo\0bar",
            "contains a control character",
        ),
        ("create_site", "cache", "yes", "is not true or false"),
        ("create_site", "cache", "True", "is not true or false"),
        ("create_site", "cache", "1", "is not true or false"),
        ("create_site", "cache", "true ", "is not true or false"),
        ("tail", "name", "x; rm -rf /", "does not match [a-z]"),
        ("tail", "name", "$(id)", "does not match"),
        ("tail", "name", "`id`", "does not match"),
        ("tail", "name", "a b", "does not match"),
        ("tail", "name", "nginx\u{ff0f}x", "does not match"),
        ("tail", "name", "../../etc/passwd", "does not match"),
        ("tail", "name", "-rf", "starts with \"-\""),
        ("tail", "name", "--help", "starts with \"-\""),
        ("tail", "name", "abc\n", "contains a control character"),
        ("tail", "name", "foo\0bar", "contains a control character"),
        ("tail", "name", &"a".repeat(32), "is longer than 31 bytes"),
        ("echo", "text", "-rf", "starts with \"-\""),
        ("echo", "text", "--help", "starts with \"-\""),
        (
            "echo",
            "text",
            "\u{1b}[31mred",
            "contains a control character",
        ),
        ("echo", "text", "tab\there", "contains a control character"),
        ("echo", "text", "c1\u{85}", "contains a control character"),
        ("echo", "text", &long, "is longer than 256 bytes"),
        ("scale", "replicas", "1; ls", "is not a decimal integer"),
        ("scale", "replicas", "+1", "is not a decimal integer"),
        ("scale", "replicas", " 1", "is not a decimal integer"),
        ("scale", "replicas", "1 ", "is not a decimal integer"),
        ("scale", "replicas", "0x1", "is not a decimal integer"),
        ("scale", "replicas", "1.0", "is not a decimal integer"),
        ("scale", "replicas", "1e1", "is not a decimal integer"),
        ("scale", "replicas", "-", "is not a decimal integer"),
        ("scale", "replicas", "", "is not a decimal integer"),
        ("scale", "replicas", "\u{661}", "is not a decimal integer"),
        ("scale", "replicas", "11", "is out of range (int 1..=10)"),
        ("scale", "replicas", "0", "is out of range (int 1..=10)"),
        ("scale", "replicas", "-1", "is out of range (int 1..=10)"),
        (
            "scale",
            "replicas",
            "99999999999999999999",
            "is out of range for a 64-bit",
        ),
        (
            "restart",
            "service",
            "nginx;",
            "is not one of nginx, php-fpm",
        ),
        (
            "restart",
            "service",
            "NGINX",
            "is not one of nginx, php-fpm",
        ),
        (
            "restart",
            "service",
            "nginx ",
            "is not one of nginx, php-fpm",
        ),
        ("restart", "service", "", "is not one of nginx, php-fpm"),
        (
            "backup",
            "dir",
            "../../etc/passwd",
            "has a \"..\" component",
        ),
        ("backup", "dir", "a/../../x", "has a \"..\" component"),
        ("backup", "dir", "/srv/www/../etc", "has a \"..\" component"),
        ("backup", "dir", "/etc/passwd", "is not under /srv/www"),
        ("backup", "dir", "/srv/wwwx/a", "is not under /srv/www"),
        ("backup", "dir", "/", "is not under /srv/www"),
        (
            "backup",
            "dir",
            "/srv/www",
            "does not name anything inside /srv/www",
        ),
        (
            "backup",
            "dir",
            ".",
            "does not name anything inside /srv/www",
        ),
        (
            "backup",
            "dir",
            "",
            "does not name anything inside /srv/www",
        ),
        ("backup", "dir", "foo\0bar", "contains a control character"),
        ("backup", "dir", "a\nb", "contains a control character"),
    ];
    for (action, param, value, expected) in cases {
        let message = refused(&set, action, param, value);
        assert!(message.contains(expected), "{value:?}: {message}");
    }
}

#[test]
fn echoed_values_are_shortened_and_escaped() {
    let set = set(ACTIONS);
    let value = format!("{}\n{}", "a".repeat(70), "b".repeat(10));
    let message = refused(&set, "echo", "text", &value);
    let shown = format!("\"{}…\"", "a".repeat(64));
    assert_eq!(
        message,
        format!("parameter \"text\": {shown} contains a control character")
    );
    let message = refused(&set, "create_site", "domain", "a\0b\u{1b}c");
    assert!(message.contains(r#""a\0b\u{1b}c""#), "{message}");
}

#[test]
fn info_lists_actions_by_name_and_params_in_declaration_order() {
    let info = set(ACTIONS).info();
    let names: Vec<_> = info.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(
        names,
        ["backup", "create_site", "echo", "restart", "scale", "tail"]
    );
    let create = &info[1];
    assert_eq!(
        create.description.as_deref(),
        Some("create a WordPress site")
    );
    assert_eq!(create.timeout_ms, Some(600_000));
    assert_eq!(
        create.params,
        [
            ParamInfo {
                name: "domain".into(),
                kind: ParamKind::Hostname,
                required: true,
                default: None,
                description: Some("the site's domain".into()),
            },
            ParamInfo {
                name: "cache".into(),
                kind: ParamKind::Bool,
                required: false,
                default: Some("true".into()),
                description: None,
            },
        ]
    );
    let tail = &info[5];
    let params: Vec<_> = tail.params.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(params, ["name", "lines"], "declaration order, not sorted");
    assert_eq!(
        tail.params[0].kind,
        ParamKind::String {
            pattern: Some("[a-z][a-z0-9_-]{0,30}".into()),
            max_len: Some(31),
            allow_leading_dash: false,
        }
    );
    assert_eq!(tail.params[1].default.as_deref(), Some("20"));
    assert_eq!(
        info[0].params[0].kind,
        ParamKind::Path {
            root: "/srv/www".into()
        }
    );
}

#[test]
fn a_string_may_allow_a_leading_dash() {
    let set = set(r#"
        [actions.grep]
        argv = ["grep", "-e", "{expr}", "--", "/var/log/syslog"]
        [actions.grep.params.expr]
        type = "string"
        allow_leading_dash = true
    "#);
    let resolved = resolve(&set, "grep", &[("expr", "-v")]).unwrap();
    assert_eq!(resolved.argv[2], "-v");
}
