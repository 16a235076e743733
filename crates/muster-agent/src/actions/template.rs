//! Argument vector templates: each element is literal text and `{param}`
//! placeholders, with `{{` and `}}` for literal braces. Substitution is per
//! element and textual: a value becomes part of exactly one argument, whatever
//! it contains, and nothing is ever handed to a shell.

use std::collections::HashMap;

use super::is_name;

/// A parsed argument vector template.
#[derive(Clone, Debug)]
pub(crate) struct Template {
    elements: Vec<Vec<Piece>>,
}

/// A run of one element: literal text or a placeholder.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Piece {
    /// Literal text, braces unescaped.
    Text(String),
    /// A `{name}` placeholder.
    Param(String),
}

impl Template {
    /// Parses every element; the error names the element and what is wrong.
    pub(crate) fn parse(argv: &[String]) -> Result<Self, String> {
        let elements = argv
            .iter()
            .enumerate()
            .map(|(i, element)| parse_element(element).map_err(|e| format!("argv[{i}] {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { elements })
    }

    /// The parameters the elements at `index` refer to, in order.
    pub(crate) fn params_of(&self, index: usize) -> impl Iterator<Item = &str> {
        self.elements[index].iter().filter_map(|piece| match piece {
            Piece::Param(name) => Some(name.as_str()),
            Piece::Text(_) => None,
        })
    }

    /// How many elements the template has.
    pub(crate) fn len(&self) -> usize {
        self.elements.len()
    }

    /// The argument vector with every placeholder replaced by its value,
    /// which the caller guarantees exists.
    pub(crate) fn render(&self, values: &HashMap<&str, String>) -> Vec<String> {
        self.elements
            .iter()
            .map(|pieces| {
                pieces
                    .iter()
                    .map(|piece| match piece {
                        Piece::Text(text) => text.as_str(),
                        Piece::Param(name) => values[name.as_str()].as_str(),
                    })
                    .collect()
            })
            .collect()
    }
}

/// Splits one element into text and placeholders.
fn parse_element(element: &str) -> Result<Vec<Piece>, String> {
    let mut pieces = Vec::new();
    let mut text = String::new();
    let mut chars = element.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '{' if chars.next_if_eq(&'{').is_some() => text.push('{'),
            '}' if chars.next_if_eq(&'}').is_some() => text.push('}'),
            '{' => {
                let name = placeholder(&mut chars)?;
                if !text.is_empty() {
                    pieces.push(Piece::Text(std::mem::take(&mut text)));
                }
                pieces.push(Piece::Param(name));
            }
            '}' => return Err("has an unmatched \"}\" (write \"}}\" for a literal brace)".into()),
            '\0' => return Err("contains a NUL byte".into()),
            c => text.push(c),
        }
    }
    if !text.is_empty() || pieces.is_empty() {
        pieces.push(Piece::Text(text));
    }
    Ok(pieces)
}

/// Reads a placeholder's name up to its `}`, after the `{`.
fn placeholder(chars: &mut impl Iterator<Item = char>) -> Result<String, String> {
    let mut name = String::new();
    for c in chars.by_ref() {
        if c == '}' {
            return if is_name(&name) {
                Ok(name)
            } else {
                Err(format!(
                    "has an invalid placeholder {{{name}}}: use {{name}} with [a-z][a-z0-9_]*, \
                     or \"{{{{\" for a literal brace"
                ))
            };
        }
        name.push(c);
    }
    Err("has an unclosed \"{\" (write \"{{\" for a literal brace)".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pieces(element: &str) -> Vec<Piece> {
        parse_element(element).unwrap()
    }

    #[test]
    fn elements_split_into_text_and_placeholders() {
        use Piece::{Param, Text};
        assert_eq!(pieces(""), [Text(String::new())]);
        assert_eq!(pieces("plain"), [Text("plain".into())]);
        assert_eq!(
            pieces("--domain={domain}"),
            [Text("--domain=".into()), Param("domain".into())]
        );
        assert_eq!(pieces("{a}{b}"), [Param("a".into()), Param("b".into())]);
        assert_eq!(pieces("{{x}}"), [Text("{x}".into())]);
        assert_eq!(
            pieces("{{{a}}}"),
            [Text("{".into()), Param("a".into()), Text("}".into())]
        );
    }

    #[test]
    fn malformed_elements_are_refused() {
        for (element, expected) in [
            ("{domain", "unclosed \"{\""),
            ("x}", "unmatched \"}\""),
            ("{}", "invalid placeholder {}"),
            ("{Domain}", "invalid placeholder {Domain}"),
            ("{a b}", "invalid placeholder {a b}"),
            ("{a{b}", "invalid placeholder {a{b}"),
            ("a\0b", "NUL byte"),
        ] {
            let error = parse_element(element).unwrap_err();
            assert!(error.contains(expected), "{element:?}: {error}");
        }
    }

    #[test]
    fn render_substitutes_each_value_into_one_element() {
        let argv = ["/bin/echo", "--name={name}", "{name}", "{{literal}}"].map(String::from);
        let template = Template::parse(&argv).unwrap();
        let values = HashMap::from([("name", "a b; $(id)".to_owned())]);
        assert_eq!(
            template.render(&values),
            ["/bin/echo", "--name=a b; $(id)", "a b; $(id)", "{literal}"]
        );
    }
}
