//! A parser for the subset of Python literal syntax `.npy` headers use: strings (with the
//! `u`/`b`/`r` prefixes), integers (with Python 2's `L`), `True`, `False`, `None`, tuples,
//! lists and dicts.
//!
//! It only checks syntax and keeps the text span of each dict value, so a caller can hand a
//! value's literal text on unchanged. Nesting is limited, so hostile input cannot recurse deep.

use std::ops::Range;

/// Why a text is not a literal we read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LiteralError {
    /// A required character is missing.
    #[error("expected {wanted:?} at byte {at}, found {found:?}")]
    Expected { wanted: char, at: usize, found: char },
    /// The text ended where a character was required.
    #[error("expected {wanted:?}, found end of header")]
    ExpectedBeforeEnd { wanted: char },
    /// A sequence or dict item is followed by neither `,` nor the closing bracket.
    #[error("expected ',' or {close:?} at byte {at}")]
    ExpectedSeparator { close: char, at: usize },
    /// A character that starts no literal.
    #[error("unexpected {found:?} at byte {at}")]
    Unexpected { found: char, at: usize },
    /// The text ended where a value was required.
    #[error("unexpected end of header")]
    UnexpectedEnd,
    /// More than [`MAX_DEPTH`] nested containers.
    #[error("literal nested too deeply")]
    NestedTooDeeply,
    /// A string without its closing quote on the same line.
    #[error("unterminated string")]
    UnterminatedString,
    /// An integer beyond 128 bits.
    #[error("integer too large")]
    IntegerTooLarge,
    /// A sign without digits.
    #[error("expected digits")]
    ExpectedDigits,
    /// A float, complex or hexadecimal number.
    #[error("only integer numbers are allowed in a .npy header")]
    NotAnInteger,
    /// A bare name other than `True`, `False` and `None`.
    #[error("unexpected name {0:?}")]
    UnknownName(String),
    /// The text is not a dict literal.
    #[error("header is not a dict")]
    NotADict,
    /// Something other than whitespace follows the dict.
    #[error("unexpected text after the header dict at byte {0}")]
    TrailingText(usize),
}

/// A parsed literal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Value {
    Str(String),
    Int(i128),
    Bool(bool),
    None,
    Tuple(Vec<Value>),
    List(Vec<Value>),
    Dict(Vec<DictItem>),
}

/// One `key: value` item of a dict, with the byte range of the value's text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DictItem {
    pub key: Value,
    pub value: Value,
    pub value_text: Range<usize>,
}

/// Nesting limit: real descrs nest a few levels; this keeps hostile input from recursing deep.
const MAX_DEPTH: usize = 64;

/// Parses `text` as exactly one dict literal, surrounded by nothing but whitespace.
///
/// # Errors
/// [`LiteralError::NotADict`], [`LiteralError::TrailingText`] or any syntax error.
pub(crate) fn parse_dict(text: &str) -> Result<Vec<DictItem>, LiteralError> {
    let mut parser = Parser { text, pos: 0 };
    parser.skip_ws();
    if parser.peek() != Some('{') {
        return Err(LiteralError::NotADict);
    }
    let items = parser.dict(0)?;
    parser.skip_ws();
    if parser.pos != text.len() {
        return Err(LiteralError::TrailingText(parser.pos));
    }
    Ok(items)
}

struct Parser<'a> {
    text: &'a str,
    pos: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<char> {
        self.text.get(self.pos..).and_then(|rest| rest.chars().next())
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += c.len_utf8();
        Some(c)
    }

    /// Skips Python whitespace, byte by byte: every whitespace character is one byte, and a
    /// UTF-8 continuation byte never matches.
    fn skip_ws(&mut self) {
        let rest = self.text.as_bytes().get(self.pos..).unwrap_or_default();
        self.pos += rest
            .iter()
            .take_while(|&&byte| matches!(byte, b' ' | b'\t' | b'\n' | b'\r' | b'\x0c'))
            .count();
    }

    fn expect(&mut self, wanted: char) -> Result<(), LiteralError> {
        self.skip_ws();
        match self.bump() {
            Some(c) if c == wanted => Ok(()),
            Some(found) => Err(LiteralError::Expected {
                wanted,
                at: self.pos - found.len_utf8(),
                found,
            }),
            None => Err(LiteralError::ExpectedBeforeEnd { wanted }),
        }
    }

    /// After an item: consumes `,` (`Ok(false)`) or `close` (`Ok(true)`).
    fn separator(&mut self, close: char) -> Result<bool, LiteralError> {
        self.skip_ws();
        let at = self.pos;
        match self.bump() {
            Some(',') => Ok(false),
            Some(c) if c == close => Ok(true),
            _ => Err(LiteralError::ExpectedSeparator { close, at }),
        }
    }

    /// Consumes `close` if it comes next (after whitespace).
    fn closes(&mut self, close: char) -> bool {
        self.skip_ws();
        if self.peek() == Some(close) {
            self.pos += close.len_utf8();
            return true;
        }
        false
    }

    /// Parses one value; returns it with the byte range of its text.
    fn value(&mut self, depth: usize) -> Result<(Value, Range<usize>), LiteralError> {
        if depth > MAX_DEPTH {
            return Err(LiteralError::NestedTooDeeply);
        }
        self.skip_ws();
        let start = self.pos;
        let value = match self.peek() {
            Some('{') => Value::Dict(self.dict(depth)?),
            Some('(') => self.sequence(depth, '(', ')')?,
            Some('[') => self.sequence(depth, '[', ']')?,
            Some('\'' | '"') => Value::Str(self.string()?),
            Some(c) if c.is_ascii_digit() || c == '-' || c == '+' => Value::Int(self.int()?),
            Some(c) if c.is_ascii_alphabetic() => self.word()?,
            Some(found) => return Err(LiteralError::Unexpected { found, at: start }),
            None => return Err(LiteralError::UnexpectedEnd),
        };
        Ok((value, start..self.pos))
    }

    /// The one dict parser: `{key: value, ...}` with an optional trailing comma.
    fn dict(&mut self, depth: usize) -> Result<Vec<DictItem>, LiteralError> {
        self.expect('{')?;
        let mut items = Vec::new();
        if self.closes('}') {
            return Ok(items);
        }
        loop {
            let (key, _) = self.value(depth + 1)?;
            self.expect(':')?;
            let (value, value_text) = self.value(depth + 1)?;
            items.push(DictItem { key, value, value_text });
            if self.separator('}')? || self.closes('}') {
                return Ok(items);
            }
        }
    }

    /// A tuple or list. `(x)` without a comma is just `x`, as in Python.
    fn sequence(&mut self, depth: usize, open: char, close: char) -> Result<Value, LiteralError> {
        self.expect(open)?;
        let mut items = Vec::new();
        let mut saw_comma = false;
        if !self.closes(close) {
            loop {
                let (item, _) = self.value(depth + 1)?;
                items.push(item);
                if self.separator(close)? {
                    break;
                }
                saw_comma = true;
                if self.closes(close) {
                    break;
                }
            }
        }
        if open == '[' {
            return Ok(Value::List(items));
        }
        if items.len() == 1 && !saw_comma {
            return Ok(items.remove(0));
        }
        Ok(Value::Tuple(items))
    }

    fn string(&mut self) -> Result<String, LiteralError> {
        let quote = self.bump().ok_or(LiteralError::UnexpectedEnd)?;
        let mut out = String::new();
        loop {
            match self.bump() {
                None | Some('\n') => return Err(LiteralError::UnterminatedString),
                Some(c) if c == quote => return Ok(out),
                Some('\\') => match self.bump() {
                    Some('n') => out.push('\n'),
                    Some('t') => out.push('\t'),
                    Some(c @ ('\\' | '\'' | '"')) => out.push(c),
                    Some(c) => {
                        out.push('\\');
                        out.push(c);
                    }
                    None => return Err(LiteralError::UnterminatedString),
                },
                Some(c) => out.push(c),
            }
        }
    }

    fn int(&mut self) -> Result<i128, LiteralError> {
        let negative = match self.peek() {
            Some('-') => {
                self.pos += 1;
                true
            }
            Some('+') => {
                self.pos += 1;
                false
            }
            _ => false,
        };
        self.skip_ws();
        let mut value: i128 = 0;
        let mut digits = 0usize;
        while let Some(c) = self.peek() {
            if let Some(digit) = c.to_digit(10) {
                value = value
                    .checked_mul(10)
                    .and_then(|v| v.checked_add(i128::from(digit)))
                    .ok_or(LiteralError::IntegerTooLarge)?;
                digits += 1;
            } else if c != '_' || digits == 0 {
                break;
            }
            self.pos += 1;
        }
        if digits == 0 {
            return Err(LiteralError::ExpectedDigits);
        }
        // Python 2 era files spell long integers with a trailing L.
        if matches!(self.peek(), Some('L' | 'l')) {
            self.pos += 1;
        }
        if matches!(self.peek(), Some('.' | 'e' | 'E' | 'j' | 'x' | 'X')) {
            return Err(LiteralError::NotAnInteger);
        }
        Ok(if negative { -value } else { value })
    }

    /// `True`, `False`, `None`, or a prefixed string (`u'..'`, `b'..'`, `r'..'`).
    fn word(&mut self) -> Result<Value, LiteralError> {
        let start = self.pos;
        while self.peek().is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            self.pos += 1;
        }
        let word = self.text.get(start..self.pos).unwrap_or_default();
        match word {
            "True" => Ok(Value::Bool(true)),
            "False" => Ok(Value::Bool(false)),
            "None" => Ok(Value::None),
            prefix
                if prefix.len() <= 2
                    && prefix.chars().all(|c| matches!(c, 'u' | 'U' | 'b' | 'B' | 'r' | 'R'))
                    && matches!(self.peek(), Some('\'' | '"')) =>
            {
                Ok(Value::Str(self.string()?))
            }
            other => Err(LiteralError::UnknownName(other.to_owned())),
        }
    }
}

#[cfg(test)]
// Tests state their expectations with unwrap/expect/panic; the workspace denies them elsewhere.
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn only_value(text: &str) -> Value {
        let items = parse_dict(&format!("{{'k': {text}}}")).unwrap();
        assert_eq!(items.len(), 1);
        items.into_iter().next().unwrap().value
    }

    #[test]
    fn parenthesised_value_is_the_value_and_a_comma_makes_a_tuple() {
        assert_eq!(only_value("(5)"), Value::Int(5));
        assert_eq!(only_value("(5,)"), Value::Tuple(vec![Value::Int(5)]));
        assert_eq!(only_value("()"), Value::Tuple(vec![]));
        assert_eq!(only_value("[5]"), Value::List(vec![Value::Int(5)]));
    }

    #[test]
    fn nested_dicts_use_the_same_parser_as_the_outer_one() {
        let Value::Dict(inner) = only_value("{'a': 1, 'b': {'c': None,},}") else {
            panic!("not a dict");
        };
        assert_eq!(inner.len(), 2);
        assert_eq!(inner[0].key, Value::Str("a".to_owned()));
        assert!(matches!(inner[1].value, Value::Dict(ref items) if items.len() == 1));
    }

    #[test]
    fn value_text_is_the_exact_span_of_the_value() {
        let text = "{'descr':   [('x', '<f8', (2, 3))]  , 'n': 1}";

        let items = parse_dict(text).unwrap();

        assert_eq!(&text[items[0].value_text.clone()], "[('x', '<f8', (2, 3))]");
        assert_eq!(&text[items[1].value_text.clone()], "1");
    }

    #[test]
    fn empty_dict_and_trailing_comma_parse() {
        assert!(parse_dict(" {} ").unwrap().is_empty());
        assert_eq!(parse_dict("{'a': 1,}").unwrap().len(), 1);
    }

    #[test]
    fn syntax_errors_are_typed() {
        let cases = [
            ("['k']", LiteralError::NotADict),
            ("{'k': 1} x", LiteralError::TrailingText(9)),
            (
                "{'k' 1}",
                LiteralError::Expected {
                    wanted: ':',
                    at: 5,
                    found: '1',
                },
            ),
            ("{'k': 1 2}", LiteralError::ExpectedSeparator { close: '}', at: 8 }),
            ("{'k': (1 2)}", LiteralError::ExpectedSeparator { close: ')', at: 9 }),
            ("{'k': 'x}", LiteralError::UnterminatedString),
            ("{'k': 2.5}", LiteralError::NotAnInteger),
            ("{'k': -}", LiteralError::ExpectedDigits),
            ("{'k': nope}", LiteralError::UnknownName("nope".to_owned())),
            ("{'k': @}", LiteralError::Unexpected { found: '@', at: 6 }),
            ("{'k':", LiteralError::UnexpectedEnd),
            ("{'k'", LiteralError::ExpectedBeforeEnd { wanted: ':' }),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_dict(text).unwrap_err(), expected, "{text}");
        }
    }

    #[test]
    fn integers_beyond_128_bits_are_refused() {
        let text = format!("{{'k': {}}}", "9".repeat(50));
        assert_eq!(parse_dict(&text).unwrap_err(), LiteralError::IntegerTooLarge);
    }

    #[test]
    fn hostile_nesting_is_refused_without_deep_recursion() {
        let text = format!("{{'k': {}1{}}}", "[".repeat(10_000), "]".repeat(10_000));
        assert_eq!(parse_dict(&text).unwrap_err(), LiteralError::NestedTooDeeply);
    }
}
