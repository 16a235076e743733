//! Agent selectors: the one syntax every command uses to pick its targets.
//!
//! The hub, the CLI and the client library all accept the same selector text,
//! so it is parsed here, once, and travels on the wire as that text.
//!
//! # Grammar
//!
//! A selector is a comma-separated list of terms. Whitespace around terms and
//! around tokens is ignored; commas inside a parenthesised set separate set
//! values, not terms.
//!
//! ```text
//! selector    = "all" | term { "," term }
//! term        = name | requirement
//! name        = { name-char | "*" | "?" | class }+        (whole-string glob)
//! class       = "[" [ "!" ] { name-char [ "-" name-char ] }+ "]"
//! requirement = key ( "=" | "==" | "!=" ) value
//!             | key ( "in" | "notin" ) "(" value+ { "," value+ } ")"
//! key         = { A-Z a-z 0-9 . _ / - }+
//! value       = { A-Z a-z 0-9 . _ : / @ + - }
//! name-char   = A-Z a-z 0-9 . _ -
//! ```
//!
//! - `all`, alone and in lower case, matches every agent; combined with other
//!   terms it is an error.
//! - A *name* term matches the agent's name, exactly or as a glob: `*` is any
//!   run of characters, `?` one character, `[abc]`, `[a-z]` and `[!a]` a
//!   character class.
//! - `key=value` (or `key==value`) needs the label with exactly that value;
//!   `key!=value` needs the label absent or different. The value may be empty.
//! - `key in (v1, v2)` needs the label present with one of the values;
//!   `key notin (v1, v2)` needs it absent or with none of them. A set holds at
//!   least one value. The keywords must be followed by whitespace or `(`.
//! - Values are exact: no globs.
//!
//! Name terms are OR'ed and label requirements AND'ed: an agent matches when
//! its name matches at least one name term (if there are any) and its labels
//! meet every requirement. `web-*,role=web` is "named web-something and with
//! role web"; `role=web,env!=prod` is "role web and env not prod".

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

#[cfg(test)]
mod tests;

/// A parsed selector.
///
/// It keeps its source text so it can travel on the wire (and be shown to
/// people) exactly as written, and serializes as that text.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct Selector {
    /// The trimmed source text.
    text: String,
    /// What the text means, ready for matching.
    parsed: Parsed,
}

impl Selector {
    /// Parses `text`, reporting the first problem with its column.
    pub fn parse(text: &str) -> Result<Self, SelectorError> {
        let parsed = Parser::new(text).parse()?;
        Ok(Self {
            text: text.trim().to_owned(),
            parsed,
        })
    }

    /// The source text, trimmed, as given.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether the agent called `name` with `labels` is selected.
    pub fn matches(&self, name: &str, labels: &BTreeMap<String, String>) -> bool {
        match &self.parsed {
            Parsed::All => true,
            Parsed::Terms {
                names,
                labels: reqs,
            } => {
                let name_ok = names.is_empty() || names.iter().any(|n| n.matches(name));
                name_ok && reqs.iter().all(|r| r.matches(labels))
            }
        }
    }

    /// The agent name when the selector is exactly one literal name term (no
    /// glob characters, no labels, not `all`), so callers can treat it as a
    /// single target.
    pub fn single_name(&self) -> Option<&str> {
        match &self.parsed {
            Parsed::Terms { names, labels } if labels.is_empty() => match names.as_slice() {
                [NamePattern::Literal(name)] => Some(name),
                _ => None,
            },
            _ => None,
        }
    }

    /// Whether the selector is `all`, so callers can skip matching entirely.
    pub fn is_all(&self) -> bool {
        matches!(self.parsed, Parsed::All)
    }
}

impl FromStr for Selector {
    type Err = SelectorError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl TryFrom<String> for Selector {
    type Error = SelectorError;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

/// Written as its source text, without copying it first.
impl Serialize for Selector {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.text)
    }
}

impl From<Selector> for String {
    fn from(value: Selector) -> Self {
        value.text
    }
}

/// Why a selector did not parse, and where.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid selector at column {column}: {message}")]
pub struct SelectorError {
    /// 1-based column (in characters) of the offending character, or one past
    /// the end for "unexpected end".
    pub column: usize,
    /// What was wrong, lowercase, e.g. `expected a value after "!="`,
    /// `unclosed "(" opened at column 8`, `unexpected character "~"`.
    pub message: String,
    /// The selector text, for rendering.
    pub input: String,
}

impl SelectorError {
    /// Two lines for a terminal: the input and a caret under the column, each
    /// indented by two spaces, so people see where the problem is.
    ///
    /// Tabs before the column are repeated in the caret line so the caret
    /// stays aligned however the terminal expands them.
    pub fn caret(&self) -> String {
        let before = self.column.saturating_sub(1);
        let mut pad: String = self
            .input
            .chars()
            .take(before)
            .map(|c| if c == '\t' { '\t' } else { ' ' })
            .collect();
        let missing = before.saturating_sub(pad.chars().count());
        pad.extend(std::iter::repeat_n(' ', missing));
        format!("  {}\n  {pad}^", self.input)
    }
}

/// The meaning of a selector, separated from its text so matching never
/// re-parses.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Parsed {
    /// `all`: every agent.
    All,
    /// Name terms (any may match) and label requirements (all must hold).
    Terms {
        /// OR'ed name patterns; empty means "any name".
        names: Vec<NamePattern>,
        /// AND'ed label requirements.
        labels: Vec<Requirement>,
    },
}

/// One name term, kept literal when it has no glob characters so
/// [`Selector::single_name`] can recognise a single target.
#[derive(Clone, Debug, PartialEq, Eq)]
enum NamePattern {
    /// An exact agent name.
    Literal(String),
    /// A whole-string glob.
    Glob(Vec<GlobToken>),
}

impl NamePattern {
    /// Whether `name` matches this term.
    fn matches(&self, name: &str) -> bool {
        match self {
            Self::Literal(literal) => literal == name,
            Self::Glob(tokens) => glob_matches(tokens, &name.chars().collect::<Vec<_>>()),
        }
    }
}

/// One compiled element of a glob, so matching needs no second parse.
#[derive(Clone, Debug, PartialEq, Eq)]
enum GlobToken {
    /// This exact character.
    Char(char),
    /// `?`: any one character.
    AnyChar,
    /// `*`: any run of characters, including none.
    AnyRun,
    /// `[...]`: one character in (or, negated, not in) inclusive ranges.
    Class {
        /// Whether the class started with `!`.
        negated: bool,
        /// Inclusive ranges; a single character is a range of one.
        ranges: Vec<(char, char)>,
    },
}

impl GlobToken {
    /// Whether this token, other than `*`, accepts the single character `c`.
    fn accepts(&self, c: char) -> bool {
        match self {
            Self::Char(expected) => *expected == c,
            Self::AnyChar => true,
            Self::AnyRun => false,
            Self::Class { negated, ranges } => {
                ranges.iter().any(|(lo, hi)| (*lo..=*hi).contains(&c)) != *negated
            }
        }
    }
}

/// Matches a whole string against glob tokens.
///
/// Linear backtracking: only the most recent `*` is ever retried, which is
/// enough for whole-string globs and cannot blow up exponentially.
fn glob_matches(tokens: &[GlobToken], text: &[char]) -> bool {
    let (mut t, mut i) = (0, 0);
    // The last `*` seen and the text position it currently stops at.
    let mut star: Option<(usize, usize)> = None;
    while i < text.len() {
        match tokens.get(t) {
            Some(GlobToken::AnyRun) => {
                star = Some((t, i));
                t += 1;
            }
            Some(token) if token.accepts(text[i]) => {
                t += 1;
                i += 1;
            }
            _ => match star {
                Some((star_t, star_i)) => {
                    t = star_t + 1;
                    i = star_i + 1;
                    star = Some((star_t, star_i + 1));
                }
                None => return false,
            },
        }
    }
    tokens[t..].iter().all(|token| *token == GlobToken::AnyRun)
}

/// One label requirement.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Requirement {
    /// The label key.
    key: String,
    /// What the label's value must satisfy.
    test: LabelTest,
}

impl Requirement {
    /// Whether `labels` meets this requirement.
    fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let value = labels.get(&self.key).map(String::as_str);
        let in_set = |set: &[String]| value.is_some_and(|v| set.iter().any(|s| s == v));
        match &self.test {
            LabelTest::Equals(expected) => value == Some(expected.as_str()),
            LabelTest::NotEquals(expected) => value != Some(expected.as_str()),
            LabelTest::In(set) => in_set(set),
            LabelTest::NotIn(set) => !in_set(set),
        }
    }
}

/// The operator of a label requirement with its operand.
#[derive(Clone, Debug, PartialEq, Eq)]
enum LabelTest {
    /// `=` / `==`: present with this value.
    Equals(String),
    /// `!=`: absent or another value.
    NotEquals(String),
    /// `in`: present with one of these values.
    In(Vec<String>),
    /// `notin`: absent or none of these values.
    NotIn(Vec<String>),
}

/// A parsed term, before terms are grouped into names and labels.
enum Term {
    /// `all`, with its column in case it was combined with other terms.
    All(usize),
    /// A name pattern.
    Name(NamePattern),
    /// A label requirement.
    Label(Requirement),
}

/// The bare word that starts a term: an agent name (or glob) or a label key.
struct Word {
    /// The word's text as written.
    text: String,
    /// The word compiled as a glob, used when it is a name term.
    tokens: Vec<GlobToken>,
    /// Column and character of the first glob character, which a key may not
    /// contain.
    first_glob: Option<(usize, char)>,
    /// Column of the first `/`, which a name may not contain.
    first_slash: Option<usize>,
}

/// Whether `c` may appear in an agent name.
fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

/// Whether `c` may appear in a label key.
fn is_key_char(c: char) -> bool {
    is_name_char(c) || c == '/'
}

/// Whether `c` may appear in a label value.
fn is_value_char(c: char) -> bool {
    is_name_char(c) || matches!(c, ':' | '/' | '@' | '+')
}

/// A recursive-descent parser over characters, so every error carries a
/// character column.
struct Parser<'a> {
    /// The text as given, for errors.
    input: &'a str,
    /// The text as characters, for indexing by column.
    chars: Vec<char>,
    /// Index of the next character; its column is `pos + 1`.
    pos: usize,
}

impl<'a> Parser<'a> {
    /// A parser at the start of `input`.
    fn new(input: &'a str) -> Self {
        Self {
            input,
            chars: input.chars().collect(),
            pos: 0,
        }
    }

    /// Parses the whole input into its meaning.
    fn parse(mut self) -> Result<Parsed, SelectorError> {
        let terms = self.terms()?;
        let mut names = Vec::new();
        let mut labels = Vec::new();
        let count = terms.len();
        for term in terms {
            match term {
                Term::All(_) if count == 1 => return Ok(Parsed::All),
                Term::All(column) => {
                    return Err(self.error_at(column, "`all` cannot be combined with other terms"));
                }
                Term::Name(pattern) => names.push(pattern),
                Term::Label(requirement) => labels.push(requirement),
            }
        }
        Ok(Parsed::Terms { names, labels })
    }

    /// `term { "," term }` up to the end of the input.
    fn terms(&mut self) -> Result<Vec<Term>, SelectorError> {
        if self.chars.iter().all(|c| c.is_whitespace()) {
            return Err(self.error_at(1, "empty selector"));
        }
        let mut terms = Vec::new();
        loop {
            terms.push(self.term()?);
            self.skip_ws();
            match self.peek() {
                None => return Ok(terms),
                Some(',') => self.pos += 1,
                Some(_) => return Err(self.unexpected("\",\" or end of selector")),
            }
        }
    }

    /// One term: a name, `all`, or a label requirement.
    fn term(&mut self) -> Result<Term, SelectorError> {
        self.skip_ws();
        match self.peek() {
            None => return Err(self.error_here("empty term after trailing \",\"")),
            Some(',') => return Err(self.error_here("empty term before \",\"")),
            _ => {}
        }
        let start = self.column();
        let word = self.word()?;
        if word.text.is_empty() {
            return Err(self.unexpected("an agent name or a label key"));
        }
        self.skip_ws();
        match self.peek() {
            None | Some(',') => self.name_term(word, start),
            Some('=' | '!') => self.comparison(word),
            Some(c) if c.is_ascii_alphabetic() => self.set_membership(word),
            Some(_) => Err(self.unexpected("an operator, \",\" or end of selector")),
        }
    }

    /// Turns a word followed by nothing into a name term (or `all`).
    fn name_term(&self, word: Word, start: usize) -> Result<Term, SelectorError> {
        if let Some(column) = word.first_slash {
            return Err(self.error_at(column, "unexpected character \"/\" in agent name"));
        }
        Ok(match word.first_glob {
            _ if word.text == "all" => Term::All(start),
            None => Term::Name(NamePattern::Literal(word.text)),
            Some(_) => Term::Name(NamePattern::Glob(word.tokens)),
        })
    }

    /// Checks that a word used as a label key has no glob characters.
    fn label_key(&self, word: Word) -> Result<String, SelectorError> {
        match word.first_glob {
            Some((column, c)) => {
                Err(self.error_at(column, format!("unexpected character \"{c}\" in label key")))
            }
            None => Ok(word.text),
        }
    }

    /// `key ("=" | "==" | "!=") value`, with the key already read.
    fn comparison(&mut self, word: Word) -> Result<Term, SelectorError> {
        let key = self.label_key(word)?;
        let operator = self.operator()?;
        self.skip_ws();
        let value = self.value();
        self.skip_ws();
        if value.is_empty() && !matches!(self.peek(), None | Some(',')) {
            return Err(self.unexpected(&format!("a value after \"{operator}\"")));
        }
        let test = match operator {
            "!=" => LabelTest::NotEquals(value),
            _ => LabelTest::Equals(value),
        };
        Ok(Term::Label(Requirement { key, test }))
    }

    /// Reads `=`, `==` or `!=`.
    fn operator(&mut self) -> Result<&'static str, SelectorError> {
        let first = self.peek();
        self.pos += 1;
        match (first, self.peek()) {
            (Some('='), Some('=')) => {
                self.pos += 1;
                Ok("==")
            }
            (Some('='), _) => Ok("="),
            (_, Some('=')) => {
                self.pos += 1;
                Ok("!=")
            }
            _ => Err(self.unexpected("\"=\" after \"!\"")),
        }
    }

    /// `key ("in" | "notin") "(" values ")"`, with the key already read.
    fn set_membership(&mut self, word: Word) -> Result<Term, SelectorError> {
        let keyword_column = self.column();
        let keyword = self.keyword();
        if keyword != "in" && keyword != "notin" {
            return Err(self.error_at(
                keyword_column,
                format!("unexpected \"{keyword}\", expected an operator, \",\" or end of selector"),
            ));
        }
        let key = self.label_key(word)?;
        self.skip_ws();
        if self.peek() != Some('(') {
            return Err(self.unexpected(&format!("\"(\" after \"{keyword}\"")));
        }
        let values = self.value_set()?;
        let test = match keyword.as_str() {
            "in" => LabelTest::In(values),
            _ => LabelTest::NotIn(values),
        };
        Ok(Term::Label(Requirement { key, test }))
    }

    /// `"(" value { "," value } ")"`, at least one non-empty value.
    fn value_set(&mut self) -> Result<Vec<String>, SelectorError> {
        let open = self.column();
        self.pos += 1;
        let unclosed = format!("unclosed \"(\" opened at column {open}");
        self.skip_ws();
        if self.peek() == Some(')') {
            return Err(self.error_here("empty set: list at least one value"));
        }
        let mut values = Vec::new();
        loop {
            self.skip_ws();
            let value = self.value();
            if value.is_empty() {
                return Err(match self.peek() {
                    None => self.error_here(&unclosed),
                    Some(_) => self.unexpected("a value in the set"),
                });
            }
            values.push(value);
            self.skip_ws();
            match self.peek() {
                Some(',') => self.pos += 1,
                Some(')') => {
                    self.pos += 1;
                    return Ok(values);
                }
                None => return Err(self.error_here(&unclosed)),
                Some(_) => return Err(self.unexpected("\",\" or \")\" in the set")),
            }
        }
    }

    /// Reads the word that starts a term, compiling it as a glob on the way.
    fn word(&mut self) -> Result<Word, SelectorError> {
        let mut word = Word {
            text: String::new(),
            tokens: Vec::new(),
            first_glob: None,
            first_slash: None,
        };
        while let Some(c) = self.peek() {
            let column = self.column();
            let token = match c {
                '[' => self.class()?,
                '*' => GlobToken::AnyRun,
                '?' => GlobToken::AnyChar,
                _ if is_key_char(c) => GlobToken::Char(c),
                _ => break,
            };
            if c != '[' {
                self.pos += 1;
            }
            if matches!(c, '[' | '*' | '?') {
                word.first_glob.get_or_insert((column, c));
            }
            if c == '/' {
                word.first_slash.get_or_insert(column);
            }
            word.text.extend(&self.chars[column - 1..self.pos]);
            word.tokens.push(token);
        }
        Ok(word)
    }

    /// A character class `[...]`, at its `[`.
    fn class(&mut self) -> Result<GlobToken, SelectorError> {
        let open = self.column();
        self.pos += 1;
        let negated = self.peek() == Some('!');
        if negated {
            self.pos += 1;
        }
        let mut ranges = Vec::new();
        loop {
            match self.peek() {
                Some(']') if ranges.is_empty() => {
                    return Err(self.error_here("empty character class"));
                }
                Some(']') => {
                    self.pos += 1;
                    return Ok(GlobToken::Class { negated, ranges });
                }
                Some(c) if is_name_char(c) => ranges.push(self.class_range(c)?),
                None => {
                    return Err(self.error_here(format!("unclosed \"[\" opened at column {open}")));
                }
                Some(_) => return Err(self.unexpected("\"]\" to close the character class")),
            }
        }
    }

    /// One class item, `c` or `c-d`, at its first character `lo`.
    fn class_range(&mut self, lo: char) -> Result<(char, char), SelectorError> {
        let column = self.column();
        self.pos += 1;
        let hi = match (self.peek(), self.peek_at(1)) {
            (Some('-'), Some(hi)) if is_name_char(hi) => hi,
            _ => return Ok((lo, lo)),
        };
        self.pos += 2;
        if hi < lo {
            return Err(self.error_at(
                column,
                format!("invalid range \"{lo}-{hi}\" in character class"),
            ));
        }
        Ok((lo, hi))
    }

    /// Reads a (possibly empty) label value.
    fn value(&mut self) -> String {
        self.take_while(is_value_char)
    }

    /// Reads a run of letters, for the `in` / `notin` keywords.
    fn keyword(&mut self) -> String {
        self.take_while(|c| c.is_ascii_alphanumeric())
    }

    /// Consumes and returns characters while `keep` accepts them.
    fn take_while(&mut self, keep: impl Fn(char) -> bool) -> String {
        let start = self.pos;
        while self.peek().is_some_and(&keep) {
            self.pos += 1;
        }
        self.chars[start..self.pos].iter().collect()
    }

    /// Skips whitespace, which is insignificant around terms and tokens.
    fn skip_ws(&mut self) {
        while self.peek().is_some_and(char::is_whitespace) {
            self.pos += 1;
        }
    }

    /// The next character, if any.
    fn peek(&self) -> Option<char> {
        self.peek_at(0)
    }

    /// The character `ahead` places after the next one, if any.
    fn peek_at(&self, ahead: usize) -> Option<char> {
        self.chars.get(self.pos + ahead).copied()
    }

    /// The 1-based column of the next character (one past the end at the end).
    fn column(&self) -> usize {
        self.pos + 1
    }

    /// An error at `column`.
    fn error_at(&self, column: usize, message: impl Into<String>) -> SelectorError {
        SelectorError {
            column,
            message: message.into(),
            input: self.input.to_owned(),
        }
    }

    /// An error at the next character.
    fn error_here(&self, message: impl Into<String>) -> SelectorError {
        self.error_at(self.column(), message)
    }

    /// An error naming the next character (or the end) and what was expected.
    fn unexpected(&self, expected: &str) -> SelectorError {
        let message = match self.peek() {
            None => format!("unexpected end of selector, expected {expected}"),
            Some(c) => format!(
                "unexpected character {:?}, expected {expected}",
                c.to_string()
            ),
        };
        self.error_here(message)
    }
}
