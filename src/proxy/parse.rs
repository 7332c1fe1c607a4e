//! The text form of expressions, read back: [`parse`] and the `FromStr` and serde
//! `Deserialize` implementations of [`Expr`] (its printer is `Display`, in [`super::expr`]).
//!
//! The reader of reference genotypes ([`super::genotype`]) uses the same cursor and error type.

use std::str::FromStr;

use serde::{Deserialize, Deserializer};

use super::expr::{Expr, Input};
use super::ops::{BinaryOp, UnaryOp};
use crate::report::clip;

/// A malformed expression or genotype text: where (byte offset into the text) and what was
/// expected there.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("parse error at byte {pos}: {message}")]
pub struct ParseError {
    /// Byte offset of the offending token (the text length when the input ended too early).
    pub pos: usize,
    /// What was wrong and what was expected.
    pub message: String,
}

/// A [`ParseError`] at byte `pos`.
pub(super) fn perr(pos: usize, message: impl Into<String>) -> ParseError {
    ParseError {
        pos,
        message: message.into(),
    }
}

/// Deepest nesting the parsers accept (guards the recursion against hostile input).
pub(super) const MAX_DEPTH: usize = 256;

/// A position in a text being parsed. Whole characters are consumed (names may hold non-ASCII
/// letters, which are then reported whole as unknown names), so `pos` is always a char
/// boundary.
#[derive(Clone, Copy)]
pub(super) struct Cursor<'s> {
    /// The whole text.
    pub(super) src: &'s str,
    /// Byte offset of the next character.
    pub(super) pos: usize,
}

impl<'s> Cursor<'s> {
    pub(super) fn new(src: &'s str) -> Self {
        Self { src, pos: 0 }
    }

    pub(super) fn peek(&self) -> Option<u8> {
        self.src.as_bytes().get(self.pos).copied()
    }

    pub(super) fn at_end(&self) -> bool {
        self.pos >= self.src.len()
    }

    pub(super) fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b) if b.is_ascii_whitespace()) {
            self.pos += 1;
        }
    }

    /// The character at the cursor.
    pub(super) fn peek_char(&self) -> Option<char> {
        self.src[self.pos..].chars().next()
    }

    /// Consumes a run of letters, digits and `_` (any script, so a name such as `héad` is read
    /// whole) and returns it (possibly empty).
    pub(super) fn word(&mut self) -> &'s str {
        let start = self.pos;
        while let Some(ch) = self
            .peek_char()
            .filter(|&ch| ch.is_alphanumeric() || ch == '_')
        {
            self.pos += ch.len_utf8();
        }
        &self.src[start..self.pos]
    }

    /// Describes what is at the cursor, for error messages.
    pub(super) fn found(&self) -> String {
        match self.src[self.pos..].chars().next() {
            None => "end of input".to_string(),
            Some(c) => format!("`{c}`"),
        }
    }

    /// "expected WHAT, found X" at the cursor.
    pub(super) fn expected(&self, what: &str) -> ParseError {
        perr(self.pos, format!("expected {what}, found {}", self.found()))
    }
}

/// Parses the expression text form (see [`super::expr`]).
///
/// Errors carry the byte offset of the problem: an unknown name (at its first byte), a missing
/// `(`, `,` or `)` (where it was expected), a wrong number of arguments (at the extra `,` or the
/// early `)`), arguments given to an input (at its `(`), trailing text after a complete
/// expression (at its first byte), or an empty text.
pub fn parse(text: &str) -> Result<Expr, ParseError> {
    let mut c = Cursor::new(text);
    let e = parse_expr(&mut c, 0)?;
    c.skip_ws();
    if !c.at_end() {
        return Err(perr(
            c.pos,
            format!(
                "unexpected trailing input {}: expected end of input after a complete expression",
                c.found()
            ),
        ));
    }
    Ok(e)
}

fn unknown_name(pos: usize, name: &str) -> ParseError {
    let inputs: Vec<&str> = Input::ALL.iter().map(|i| i.name()).collect();
    let unary: Vec<&str> = UnaryOp::ALL.iter().map(|o| o.name()).collect();
    let binary: Vec<&str> = BinaryOp::NAMED.iter().map(|o| o.name()).collect();
    perr(
        pos,
        format!(
            "unknown name `{}`: expected an input ({}), a unary op ({}) or a binary op ({})",
            clip(name),
            inputs.join(", "),
            unary.join(", "),
            binary.join(", ")
        ),
    )
}

fn parse_expr(c: &mut Cursor<'_>, depth: usize) -> Result<Expr, ParseError> {
    c.skip_ws();
    let start = c.pos;
    if depth > MAX_DEPTH {
        return Err(perr(
            start,
            format!("expression nested deeper than {MAX_DEPTH} levels"),
        ));
    }
    if !c
        .peek_char()
        .is_some_and(|ch| ch.is_alphabetic() || ch == '_')
    {
        return Err(c.expected("an input name or an op call"));
    }
    let name = c.word();
    c.skip_ws();
    if c.peek() != Some(b'(') {
        if let Ok(input) = name.parse::<Input>() {
            return Ok(Expr::Input(input));
        }
        if name.parse::<UnaryOp>().is_ok() || name.parse::<BinaryOp>().is_ok() {
            return Err(c.expected(&format!("`(` after op `{name}`")));
        }
        return Err(unknown_name(start, name));
    }
    let open = c.pos;
    c.pos += 1;
    if let Ok(op) = name.parse::<UnaryOp>() {
        let arg = parse_expr(c, depth + 1)?;
        c.skip_ws();
        return match c.peek() {
            Some(b')') => {
                c.pos += 1;
                Ok(Expr::unary(op, arg))
            }
            Some(b',') => Err(perr(
                c.pos,
                format!("unary op `{op}` takes one argument: expected `)`, found `,`"),
            )),
            _ => Err(c.expected(&format!("`)` closing `{op}(` at byte {open}"))),
        };
    }
    if let Ok(op) = name.parse::<BinaryOp>() {
        if op.is_set_level() && depth > 0 {
            return Err(perr(
                start,
                format!(
                    "`{op}` ranks across a set of architectures, so it can only be the outermost \
                     call of an expression"
                ),
            ));
        }
        let left = parse_expr(c, depth + 1)?;
        c.skip_ws();
        match c.peek() {
            Some(b',') => c.pos += 1,
            Some(b')') => {
                return Err(perr(
                    c.pos,
                    format!("binary op `{op}` takes two arguments: expected `,`, found `)`"),
                ))
            }
            _ => return Err(c.expected(&format!("`,` between the two arguments of `{op}`"))),
        }
        let right = parse_expr(c, depth + 1)?;
        c.skip_ws();
        return match c.peek() {
            Some(b')') => {
                c.pos += 1;
                Ok(Expr::binary(op, left, right))
            }
            Some(b',') => Err(perr(
                c.pos,
                format!("binary op `{op}` takes two arguments: expected `)`, found `,`"),
            )),
            _ => Err(c.expected(&format!("`)` closing `{op}(` at byte {open}"))),
        };
    }
    if let Ok(input) = name.parse::<Input>() {
        return Err(perr(
            open,
            format!("input `{input}` takes no arguments: unexpected `(`"),
        ));
    }
    Err(unknown_name(start, name))
}

impl Expr {
    /// Parses the text form; same as [`parse`].
    pub fn parse(text: &str) -> Result<Self, ParseError> {
        parse(text)
    }
}

impl FromStr for Expr {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse(s)
    }
}

impl<'de> Deserialize<'de> for Expr {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        parse(&text).map_err(serde::de::Error::custom)
    }
}
