use std::collections::BTreeMap;

use super::*;

/// A small fleet covering present, absent and differing labels.
fn fleet() -> Vec<(&'static str, BTreeMap<String, String>)> {
    let agent = |name, labels: &[(&str, &str)]| {
        let labels = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        (name, labels)
    };
    vec![
        agent(
            "web-1",
            &[("role", "web"), ("env", "prod"), ("region", "eu")],
        ),
        agent(
            "web-2",
            &[("role", "web"), ("env", "staging"), ("region", "us")],
        ),
        agent("web-3", &[("role", "web"), ("region", "ap")]),
        agent("db-1", &[("role", "db"), ("env", "prod"), ("region", "eu")]),
        agent("db-2", &[("role", "db"), ("env", "dev")]),
        agent("cache-1", &[]),
    ]
}

/// The names in the fleet that `text` selects, in fleet order.
fn selected(text: &str) -> Vec<&'static str> {
    let selector = Selector::parse(text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
    fleet()
        .into_iter()
        .filter(|(name, labels)| selector.matches(name, labels))
        .map(|(name, _)| name)
        .collect()
}

/// The error `text` must produce.
fn error(text: &str) -> SelectorError {
    match Selector::parse(text) {
        Ok(selector) => panic!("{text:?} parsed as {selector:?}"),
        Err(e) => e,
    }
}

#[test]
fn selects_the_expected_agents() {
    let cases: &[(&str, &[&str])] = &[
        ("role=web,env!=prod", &["web-2", "web-3"]),
        ("web-*", &["web-1", "web-2", "web-3"]),
        ("web-?", &["web-1", "web-2", "web-3"]),
        ("db-[12]", &["db-1", "db-2"]),
        ("db-[!1]", &["db-2"]),
        ("db-[0-1]", &["db-1"]),
        ("c[a-c]che-?", &["cache-1"]),
        ("*-1", &["web-1", "db-1", "cache-1"]),
        ("*", &["web-1", "web-2", "web-3", "db-1", "db-2", "cache-1"]),
        ("region in (eu,us)", &["web-1", "web-2", "db-1"]),
        ("region notin (eu)", &["web-2", "web-3", "db-2", "cache-1"]),
        ("env notin (prod, staging)", &["web-3", "db-2", "cache-1"]),
        ("role==db", &["db-1", "db-2"]),
        ("role=db", &["db-1", "db-2"]),
        (
            "all",
            &["web-1", "web-2", "web-3", "db-1", "db-2", "cache-1"],
        ),
        ("web-1,db-2", &["web-1", "db-2"]),
        ("web-*,env=prod", &["web-1"]),
        ("web-1,db-1,region=eu,env=prod", &["web-1", "db-1"]),
        ("env=", &[]),
        (
            "env!=",
            &["web-1", "web-2", "web-3", "db-1", "db-2", "cache-1"],
        ),
        ("web-9", &[]),
        ("Web-1", &[]),
        (" role = web , env != prod ", &["web-2", "web-3"]),
        ("region in(eu, us)", &["web-1", "web-2", "db-1"]),
        ("region\tnotin\t( eu , us )", &["web-3", "db-2", "cache-1"]),
    ];
    for (text, expected) in cases {
        assert_eq!(selected(text), *expected, "selector {text:?}");
    }
}

#[test]
fn keys_and_values_allow_their_punctuation() {
    let labels: BTreeMap<String, String> = [
        ("team.example.com/owner", "ops@example.com"),
        ("version", "1.2.3+build:7"),
        ("note", ""),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    for text in [
        "team.example.com/owner=ops@example.com",
        "version in (1.2.3+build:7, 2.0)",
        "note=",
        "note==,version!=1",
    ] {
        let selector = Selector::parse(text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
        assert!(selector.matches("any", &labels), "{text:?}");
    }
}

#[test]
fn globs_backtrack_and_match_whole_names() {
    let cases = [
        ("*a*b", "xaxxab", true),
        ("*a*b", "xaxxabc", false),
        ("a*", "a", true),
        ("*", "", true),
        ("?", "", false),
        ("a?c", "abc", true),
        ("a?c", "abbc", false),
        ("web", "web-1", false),
        ("web*1", "web-1", true),
        ("[-x]", "-", true),
        ("[a-]", "-", true),
        ("[!a-c]x", "dx", true),
        ("[!a-c]x", "bx", false),
    ];
    for (pattern, name, expected) in cases {
        let selector = Selector::parse(pattern).unwrap_or_else(|e| panic!("{pattern:?}: {e}"));
        assert_eq!(
            selector.matches(name, &BTreeMap::new()),
            expected,
            "{pattern:?} against {name:?}"
        );
    }
}

#[test]
fn errors_name_the_column_and_problem() {
    let cases = [
        ("", 1, "empty selector"),
        ("   ", 1, "empty selector"),
        ("role=web,", 10, "empty term"),
        (",role=web", 1, "empty term"),
        ("a,,b", 3, "empty term"),
        ("role~web", 5, "unexpected character \"~\""),
        ("region in (eu,us", 17, "unclosed \"(\" opened at column 11"),
        ("region in (", 12, "unclosed \"(\" opened at column 11"),
        ("region in ()", 12, "empty set"),
        ("region in (eu,)", 15, "expected a value in the set"),
        ("region in (eu us)", 15, "unexpected character \"u\""),
        (
            "all,role=web",
            1,
            "`all` cannot be combined with other terms",
        ),
        (
            "role=web, all",
            11,
            "`all` cannot be combined with other terms",
        ),
        ("role=we b", 9, "unexpected character \"b\""),
        ("region in eu", 11, "expected \"(\" after \"in\""),
        (
            "region notin",
            13,
            "unexpected end of selector, expected \"(\" after \"notin\"",
        ),
        ("region inx (eu)", 8, "unexpected \"inx\""),
        ("web-1 db-1", 7, "unexpected \"db\""),
        ("role!web", 6, "expected \"=\" after \"!\""),
        ("role!=*", 7, "expected a value after \"!=\""),
        ("role===web", 7, "expected a value after \"==\""),
        ("role=web*", 9, "unexpected character \"*\""),
        ("role=web)", 9, "unexpected character \")\""),
        ("(role=web)", 1, "unexpected character \"(\""),
        ("db-[12", 7, "unclosed \"[\" opened at column 4"),
        ("db-[]", 5, "empty character class"),
        ("db-[9-0]", 5, "invalid range \"9-0\""),
        ("db-[1,2]", 6, "unexpected character \",\""),
        ("web/1", 4, "unexpected character \"/\" in agent name"),
        ("web-*=x", 5, "unexpected character \"*\" in label key"),
        (
            "web-[12] in (a)",
            5,
            "unexpected character \"[\" in label key",
        ),
    ];
    for (text, column, message) in cases {
        let e = error(text);
        assert_eq!(e.column, column, "{text:?}: {e}");
        assert!(e.message.contains(message), "{text:?}: {e}");
        assert_eq!(e.input, text);
    }
}

#[test]
fn errors_are_lowercase_and_render_with_their_column() {
    let e = error("role~web");
    assert_eq!(
        e.to_string(),
        "invalid selector at column 5: unexpected character \"~\", expected an operator, \",\" or end of selector"
    );
    assert!(!e.message.ends_with('.'));
}

#[test]
fn caret_points_at_the_column() {
    assert_eq!(
        error("role=web,env~prod").caret(),
        "  role=web,env~prod\n              ^"
    );
    assert_eq!(error("role=web,").caret(), "  role=web,\n           ^");
    assert_eq!(error("\trole~web").caret(), "  \trole~web\n  \t    ^");
}

#[test]
fn serializes_as_its_text() {
    let selector = Selector::parse("role=web").unwrap();
    assert_eq!(serde_json::to_string(&selector).unwrap(), "\"role=web\"");
    let back: Selector = serde_json::from_str("\"role=web\"").unwrap();
    assert_eq!(back, selector);
    let err = serde_json::from_str::<Selector>("\"role~web\"").unwrap_err();
    assert!(err.to_string().contains("column 5"), "{err}");
}

#[test]
fn keeps_the_trimmed_text() {
    let selector: Selector = " region in (eu, us) ".parse().unwrap();
    assert_eq!(selector.as_str(), "region in (eu, us)");
    assert_eq!(selector.to_string(), "region in (eu, us)");
    assert_eq!(String::from(selector), "region in (eu, us)");
}

#[test]
fn single_name_only_for_one_literal_name() {
    let cases = [
        ("web-1", Some("web-1")),
        (" web-1 ", Some("web-1")),
        ("all", None),
        ("web-*", None),
        ("web-?", None),
        ("web-[1]", None),
        ("web-1,web-2", None),
        ("web-1,role=web", None),
        ("role=web", None),
    ];
    for (text, expected) in cases {
        let selector = Selector::parse(text).unwrap();
        assert_eq!(selector.single_name(), expected, "{text:?}");
    }
}

#[test]
fn all_is_exact_and_lowercase() {
    assert!(Selector::parse("all").unwrap().is_all());
    assert!(Selector::parse(" all ").unwrap().is_all());
    for text in ["All", "all-1", "all=yes", "web-1"] {
        assert!(!Selector::parse(text).unwrap().is_all(), "{text:?}");
    }
    assert_eq!(Selector::parse("All").unwrap().single_name(), Some("All"));
}
