//! Reference LPZero tree genotypes and their import.
//!
//! The reference tree `{input_geno: [x, y], op_geno: [[u1, u2], [v1, v2], bin]}` is the
//! expression `bin(mean(u2(u1(x))), mean(v2(v1(y))))` ([`from_tree_genotype`]): each branch item
//! is reduced by its mean before the binary op, exactly like the reference's
//! `convert_to_float`. [`parse_tree_genotype`] reads every form the reference logs.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::expr::{Expr, Input};
use super::ops::{BinaryOp, UnaryOp};
use super::parse::{perr, Cursor, ParseError, MAX_DEPTH};
use crate::report::clip;

/// A reference LPZero tree genotype (spec §4.4): two inputs, a chain of unary ops per branch
/// (applied first to last), and the binary op that combines the branch means.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TreeGenotype {
    /// Branch inputs (`input_geno`).
    pub inputs: [Input; 2],
    /// Unary op chains per branch, in application order (`op_geno[0]`, `op_geno[1]`).
    pub unary: [Vec<UnaryOp>; 2],
    /// The binary op (`op_geno[2]`).
    pub binary: BinaryOp,
}

/// Names of the published genotypes known to [`builtin_genotype`].
pub const BUILTIN_GENOTYPES: [&str; 3] = ["lpzero_bert", "lpzero_csv_bert", "lpzero_gpt2"];

impl TreeGenotype {
    /// Builds a genotype from reference integers: input indices into [`Input::ALL`], HEAD unary
    /// indices per branch and the binary index. `None` when an index is out of range.
    pub fn from_indices(inputs: [usize; 2], unary: [&[usize]; 2], binary: usize) -> Option<Self> {
        let chain = |ops: &[usize]| {
            ops.iter()
                .map(|&i| UnaryOp::from_index(i))
                .collect::<Option<Vec<_>>>()
        };
        Some(Self {
            inputs: [Input::from_index(inputs[0])?, Input::from_index(inputs[1])?],
            unary: [chain(unary[0])?, chain(unary[1])?],
            binary: BinaryOp::from_index(binary)?,
        })
    }

    /// The published genotypes (spec §4.8):
    /// * `lpzero_bert`: `[head, act]`, `[[15, 3], [8, 13]]`, sum (the final BERT proxy);
    /// * `lpzero_csv_bert`: `[softmax, head]`, `[[19, 14], [8, 6]]`, sum (the BERT CSV column);
    /// * `lpzero_gpt2`: `[weight, grad]`, `[[3, 10], [11, 3]]`, sum (the final GPT-2 proxy).
    pub fn builtin(name: &str) -> Option<Self> {
        match name {
            "lpzero_bert" => Self::from_indices([1, 0], [&[15, 3], &[8, 13]], 0),
            "lpzero_csv_bert" => Self::from_indices([2, 1], [&[19, 14], &[8, 6]], 0),
            "lpzero_gpt2" => Self::from_indices([4, 3], [&[3, 10], &[11, 3]], 0),
            _ => None,
        }
    }

    /// The expression `binary(mean(chain0(input0)), mean(chain1(input1)))`.
    pub fn to_expr(&self) -> Expr {
        from_tree_genotype(self.inputs, self.unary.clone(), self.binary)
    }

    /// Parses any of the accepted genotype forms; same as [`parse_tree_genotype`].
    pub fn parse(text: &str) -> Result<Self, ParseError> {
        parse_tree_genotype(text)
    }

    /// The reference dictionary `{"input_geno": [names], "op_geno": [[idx..], [idx..], bin]}`.
    pub fn reference_json(&self) -> serde_json::Value {
        let idx = |ops: &[UnaryOp]| ops.iter().map(|o| o.index()).collect::<Vec<_>>();
        serde_json::json!({
            "input_geno": [self.inputs[0].name(), self.inputs[1].name()],
            "op_geno": [idx(&self.unary[0]), idx(&self.unary[1]), self.binary.index()],
        })
    }
}

impl fmt::Display for TreeGenotype {
    /// Writes the text form `INPUT:(head, act)TREE:(neg|pow2~frobenius_norm|logsoftmax)BINARY:(add)`
    /// (ops of a branch joined by `|`, branches by `~`), which [`parse_tree_genotype`] reads back.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let chain = |ops: &[UnaryOp]| ops.iter().map(|o| o.name()).collect::<Vec<_>>().join("|");
        write!(
            f,
            "INPUT:({}, {})TREE:({}~{})BINARY:({})",
            self.inputs[0],
            self.inputs[1],
            chain(&self.unary[0]),
            chain(&self.unary[1]),
            self.binary
        )
    }
}

impl FromStr for TreeGenotype {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_tree_genotype(s)
    }
}

/// The expression of a reference tree genotype: `binary(mean(u_n(…u_1(x))), mean(v_m(…v_1(y))))`
/// with `[x, y] = inputs` and `[[u_1…u_n], [v_1…v_m]] = unary` (applied first to last). The
/// per-branch `mean` reproduces the reference's reduction of every item before the binary op.
pub fn from_tree_genotype(inputs: [Input; 2], unary: [Vec<UnaryOp>; 2], binary: BinaryOp) -> Expr {
    let [first, second] = unary;
    let branch = |input: Input, ops: Vec<UnaryOp>| {
        let chain = ops
            .into_iter()
            .fold(Expr::Input(input), |e, op| Expr::unary(op, e));
        Expr::unary(UnaryOp::Mean, chain)
    };
    Expr::binary(binary, branch(inputs[0], first), branch(inputs[1], second))
}

/// The expression of a published genotype (see [`TreeGenotype::builtin`] and
/// [`BUILTIN_GENOTYPES`]), or `None` for an unknown name.
pub fn builtin_genotype(name: &str) -> Option<Expr> {
    TreeGenotype::builtin(name).map(|g| g.to_expr())
}

/// Parses a reference tree genotype. Accepted forms (whitespace-tolerant; names are canonical
/// or reference names in any ASCII case; wherever an op or input is expected an integer index
/// is accepted too: HEAD unary index 0–20, binary index 0–3, input index 0–4 into
/// [`Input::ALL`]):
///
/// 1. Text form, as logged by the reference and printed by [`TreeGenotype`]'s `Display`:
///    `INPUT:(head, act)TREE:(...)BINARY:(add)`, with the `TREE` body one of
///    * nested lists `[[15, 3], [8, 13]]`;
///    * branches separated by `~`, ops by `|`, `-` or `,`: `neg|pow2~frobenius_norm|logsoftmax`;
///    * the reference crossover/mutation log form, ops by `-`, branches by `|`:
///      `element_wise_revert-element_wise_pow|frobenius_norm-logsoftmax`;
///    * the reference generation log form, a flat `|`- or `,`-separated list split in half:
///      `element_wise_revert|element_wise_pow|frobenius_norm|logsoftmax`.
/// 2. `key=value` pairs (`:` also works), separated by whitespace, `,` or `;`:
///    `inputs=[1,0] ops=[[15,3],[8,13]] bin=0`. Keys: `inputs`/`input`/`input_geno`,
///    `ops`/`op_geno`/`tree`, `bin`/`binary`. `ops` may carry the binary op as a third element.
/// 3. A JSON object or Python dict with the same keys:
///    `{"input_geno":["head","act"],"op_geno":[[15,3],[8,13],0]}`.
///
/// Lists may use `[...]` or `(...)`, items may be quoted with `"` or `'`.
pub fn parse_tree_genotype(text: &str) -> Result<TreeGenotype, ParseError> {
    let mut c = Cursor::new(text);
    c.skip_ws();
    let genotype = if c.peek() == Some(b'{') {
        parse_geno_dict(&mut c)?
    } else if looks_like_text_form(c) {
        parse_geno_text(&mut c)?
    } else {
        parse_geno_pairs(&mut c)?
    };
    c.skip_ws();
    if !c.at_end() {
        return Err(perr(
            c.pos,
            format!(
                "unexpected trailing input {}: expected end of the genotype",
                c.found()
            ),
        ));
    }
    Ok(genotype)
}

/// A loosely typed genotype value: a bare or quoted word, or a list, with its byte offset.
enum GVal {
    Atom(usize, String),
    List(usize, Vec<GVal>),
}

impl GVal {
    fn pos(&self) -> usize {
        match self {
            GVal::Atom(p, _) | GVal::List(p, _) => *p,
        }
    }
}

fn parse_gval(c: &mut Cursor<'_>, depth: usize) -> Result<GVal, ParseError> {
    c.skip_ws();
    let start = c.pos;
    if depth > MAX_DEPTH {
        return Err(perr(start, "genotype nested too deeply"));
    }
    match c.peek() {
        Some(open @ (b'[' | b'(')) => {
            let close = if open == b'[' { b']' } else { b')' };
            c.pos += 1;
            let mut items = Vec::new();
            loop {
                c.skip_ws();
                match c.peek() {
                    Some(b) if b == close => {
                        c.pos += 1;
                        return Ok(GVal::List(start, items));
                    }
                    Some(b',') => c.pos += 1,
                    None => {
                        return Err(c.expected(&format!(
                            "`{}` closing the list opened at byte {start}",
                            close as char
                        )))
                    }
                    _ => items.push(parse_gval(c, depth + 1)?),
                }
            }
        }
        Some(quote @ (b'"' | b'\'')) => {
            c.pos += 1;
            let body_start = c.pos;
            match c.src[body_start..].find(quote as char) {
                Some(len) => {
                    c.pos = body_start + len + 1;
                    Ok(GVal::Atom(
                        start,
                        c.src[body_start..body_start + len].trim().to_string(),
                    ))
                }
                None => Err(perr(
                    c.src.len(),
                    format!(
                        "expected a closing {} for the quote at byte {start}",
                        quote as char
                    ),
                )),
            }
        }
        _ => {
            let w = c.word();
            if w.is_empty() {
                return Err(c.expected("a name, an index or a list"));
            }
            Ok(GVal::Atom(start, w.to_string()))
        }
    }
}

/// The text of an atom; a list is an error naming `what` was expected.
fn atom<'v>(v: &'v GVal, what: &str) -> Result<&'v str, ParseError> {
    match v {
        GVal::Atom(_, s) => Ok(s),
        GVal::List(p, _) => Err(perr(*p, format!("expected {what}, found a list"))),
    }
}

/// The items of a list with exactly `n` items (`n = None`: any length).
fn list<'v>(v: &'v GVal, what: &str, n: Option<usize>) -> Result<&'v [GVal], ParseError> {
    match v {
        GVal::List(p, items) => match n {
            Some(n) if items.len() != n => Err(perr(
                *p,
                format!(
                    "expected {what} ({n} items), found a list of {} items",
                    items.len()
                ),
            )),
            _ => Ok(items),
        },
        GVal::Atom(p, s) => Err(perr(*p, format!("expected {what}, found `{}`", clip(s)))),
    }
}

fn index_of(s: &str) -> Option<usize> {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        s.parse().ok()
    } else {
        None
    }
}

fn gval_input(v: &GVal) -> Result<Input, ParseError> {
    let s = atom(v, "an input")?;
    let found = match index_of(s) {
        Some(i) => Input::from_index(i),
        None => s.parse().ok(),
    };
    found.ok_or_else(|| {
        perr(
            v.pos(),
            format!(
                "unknown input `{}`: expected act, head, softmax, grad, weight or an index 0-4",
                clip(s)
            ),
        )
    })
}

fn gval_unary(v: &GVal) -> Result<UnaryOp, ParseError> {
    let s = atom(v, "a unary op")?;
    let found = match index_of(s) {
        Some(i) => UnaryOp::from_index(i),
        None => s.parse().ok(),
    };
    found.ok_or_else(|| {
        perr(
            v.pos(),
            format!(
                "unknown unary op `{}`: expected a unary op name or an index 0-20",
                clip(s)
            ),
        )
    })
}

fn gval_binary(v: &GVal) -> Result<BinaryOp, ParseError> {
    // A one-item list such as `(0)` or `[add]` is accepted as its item.
    let mut v = v;
    while let GVal::List(_, items) = v {
        if items.len() != 1 {
            break;
        }
        v = &items[0];
    }
    let s = atom(v, "a binary op")?;
    let found = match index_of(s) {
        Some(i) => BinaryOp::from_index(i),
        None => s.parse().ok(),
    };
    found.ok_or_else(|| {
        perr(
            v.pos(),
            format!(
                "unknown binary op `{}`: expected add, sub, mul, matmul or an index 0-3",
                clip(s)
            ),
        )
    })
}

fn gval_inputs(v: &GVal) -> Result<[Input; 2], ParseError> {
    let items = list(v, "a list of two inputs", Some(2))?;
    Ok([gval_input(&items[0])?, gval_input(&items[1])?])
}

fn gval_chain(v: &GVal) -> Result<Vec<UnaryOp>, ParseError> {
    list(v, "a list of unary ops", None)?
        .iter()
        .map(gval_unary)
        .collect()
}

/// The two unary chains of a genotype and, when the ops list carried it, the binary op with the
/// byte offset where it was written.
type OpsField = ([Vec<UnaryOp>; 2], Option<(BinaryOp, usize)>);

/// `[[u..], [v..]]` or `[[u..], [v..], bin]`.
fn gval_ops(v: &GVal) -> Result<OpsField, ParseError> {
    let items = list(v, "two lists of unary ops", None)?;
    if items.len() != 2 && items.len() != 3 {
        return Err(perr(
            v.pos(),
            format!(
                "expected two lists of unary ops (and optionally the binary op), found {} items",
                items.len()
            ),
        ));
    }
    let chains = [gval_chain(&items[0])?, gval_chain(&items[1])?];
    let bin = match items.get(2) {
        Some(b) => Some((gval_binary(b)?, b.pos())),
        None => None,
    };
    Ok((chains, bin))
}

/// The fields of forms 2 and 3, filled key by key.
#[derive(Default)]
struct GenoFields {
    inputs: Option<[Input; 2]>,
    ops: Option<OpsField>,
    bin: Option<(BinaryOp, usize)>,
}

impl GenoFields {
    fn set(&mut self, key_pos: usize, key: &str, value: &GVal) -> Result<(), ParseError> {
        let duplicate = || perr(key_pos, format!("key `{key}` given twice"));
        match key.to_ascii_lowercase().as_str() {
            "inputs" | "input" | "input_geno" => {
                if self.inputs.is_some() {
                    return Err(duplicate());
                }
                self.inputs = Some(gval_inputs(value)?);
            }
            "ops" | "op_geno" | "tree" => {
                if self.ops.is_some() {
                    return Err(duplicate());
                }
                self.ops = Some(gval_ops(value)?);
            }
            "bin" | "binary" => {
                if self.bin.is_some() {
                    return Err(duplicate());
                }
                self.bin = Some((gval_binary(value)?, value.pos()));
            }
            _ => {
                return Err(perr(
                    key_pos,
                    format!("unknown key `{key}`: expected inputs (input_geno), ops (op_geno) or bin (binary)"),
                ))
            }
        }
        Ok(())
    }

    fn finish(self, end: usize) -> Result<TreeGenotype, ParseError> {
        let inputs = self
            .inputs
            .ok_or_else(|| perr(end, "missing key `inputs` (or `input_geno`)"))?;
        let (unary, bin_in_ops) = self
            .ops
            .ok_or_else(|| perr(end, "missing key `ops` (or `op_geno`)"))?;
        let binary = match (self.bin, bin_in_ops) {
            (Some((a, pos)), Some((b, _))) if a != b => {
                return Err(perr(
                    pos,
                    format!("binary op `{a}` contradicts `{b}` given in the ops list"),
                ))
            }
            (Some((b, _)), _) | (None, Some((b, _))) => b,
            (None, None) => {
                return Err(perr(
                    end,
                    "missing the binary op (key `bin`, or a third item of `ops`)",
                ))
            }
        };
        Ok(TreeGenotype {
            inputs,
            unary,
            binary,
        })
    }
}

/// Form 3: `{key: value, ...}`.
fn parse_geno_dict(c: &mut Cursor<'_>) -> Result<TreeGenotype, ParseError> {
    c.pos += 1; // `{`
    let mut fields = GenoFields::default();
    loop {
        c.skip_ws();
        match c.peek() {
            Some(b'}') => {
                c.pos += 1;
                break;
            }
            Some(b',') => c.pos += 1,
            None => return Err(c.expected("`}` closing the genotype object")),
            _ => {
                let key = parse_gval(c, 0)?;
                let key_text = atom(&key, "a key")?.to_string();
                c.skip_ws();
                if !matches!(c.peek(), Some(b':' | b'=')) {
                    return Err(c.expected(&format!("`:` after key `{key_text}`")));
                }
                c.pos += 1;
                let value = parse_gval(c, 0)?;
                fields.set(key.pos(), &key_text, &value)?;
            }
        }
    }
    fields.finish(c.pos)
}

/// Form 2: `key=value key=value ...`.
fn parse_geno_pairs(c: &mut Cursor<'_>) -> Result<TreeGenotype, ParseError> {
    let mut fields = GenoFields::default();
    loop {
        c.skip_ws();
        match c.peek() {
            None => break,
            Some(b',' | b';') => c.pos += 1,
            _ => {
                let key_pos = c.pos;
                let key = c.word();
                if key.is_empty() {
                    return Err(c.expected("a genotype: `INPUT:(...)TREE:(...)BINARY:(...)`, `{...}` or `key=value` pairs"));
                }
                c.skip_ws();
                if !matches!(c.peek(), Some(b'=' | b':')) {
                    return Err(c.expected(&format!("`=` after key `{key}`")));
                }
                c.pos += 1;
                let value = parse_gval(c, 0)?;
                fields.set(key_pos, key, &value)?;
            }
        }
    }
    fields.finish(c.pos)
}

/// True when the text starts with `INPUT` `:` `(` (form 1).
fn looks_like_text_form(mut c: Cursor<'_>) -> bool {
    let w = c.word();
    c.skip_ws();
    if !w.eq_ignore_ascii_case("input") || c.peek() != Some(b':') {
        return false;
    }
    c.pos += 1;
    c.skip_ws();
    c.peek() == Some(b'(')
}

/// Consumes `KEYWORD :` (case-insensitive) and leaves the cursor before the `(`.
fn expect_section(c: &mut Cursor<'_>, keyword: &str) -> Result<(), ParseError> {
    c.skip_ws();
    let start = c.pos;
    let w = c.word();
    if !w.eq_ignore_ascii_case(keyword) {
        c.pos = start;
        return Err(c.expected(&format!("`{keyword}:`")));
    }
    c.skip_ws();
    if c.peek() != Some(b':') {
        return Err(c.expected(&format!("`:` after `{keyword}`")));
    }
    c.pos += 1;
    c.skip_ws();
    if c.peek() != Some(b'(') {
        return Err(c.expected(&format!("`(` after `{keyword}:`")));
    }
    Ok(())
}

/// Form 1: `INPUT:(x, y)TREE:(...)BINARY:(b)`.
fn parse_geno_text(c: &mut Cursor<'_>) -> Result<TreeGenotype, ParseError> {
    expect_section(c, "INPUT")?;
    let inputs = gval_inputs(&parse_gval(c, 0)?)?;
    expect_section(c, "TREE")?;
    let unary = parse_tree_body(c)?;
    expect_section(c, "BINARY")?;
    let binary = gval_binary(&parse_gval(c, 0)?)?;
    Ok(TreeGenotype {
        inputs,
        unary,
        binary,
    })
}

/// The `( ... )` after `TREE:` (cursor on the `(`); see [`parse_tree_genotype`] for the forms.
fn parse_tree_body(c: &mut Cursor<'_>) -> Result<[Vec<UnaryOp>; 2], ParseError> {
    let open = c.pos;
    c.pos += 1;
    c.skip_ws();
    if c.peek() == Some(b'[') {
        let v = parse_gval(c, 0)?;
        let items = list(&v, "two lists of unary ops", Some(2))?;
        let chains = [gval_chain(&items[0])?, gval_chain(&items[1])?];
        c.skip_ws();
        if c.peek() != Some(b')') {
            return Err(c.expected("`)` closing `TREE:(`"));
        }
        c.pos += 1;
        return Ok(chains);
    }
    enum Tok {
        Op(UnaryOp),
        Sep(u8, usize),
    }
    let mut toks = Vec::new();
    loop {
        c.skip_ws();
        match c.peek() {
            Some(b')') => {
                c.pos += 1;
                break;
            }
            Some(s @ (b'|' | b'-' | b'~' | b',')) => {
                toks.push(Tok::Sep(s, c.pos));
                c.pos += 1;
            }
            None => return Err(c.expected(&format!("`)` closing `TREE:(` at byte {open}"))),
            _ => {
                let start = c.pos;
                let w = c.word();
                if w.is_empty() {
                    return Err(c.expected("a unary op name or index"));
                }
                toks.push(Tok::Op(gval_unary(&GVal::Atom(start, w.to_string()))?));
            }
        }
    }
    let has = |sep: u8| {
        toks.iter()
            .any(|t| matches!(t, Tok::Sep(s, _) if *s == sep))
    };
    let branch_sep = if has(b'~') {
        Some(b'~')
    } else if has(b'|') && has(b'-') {
        Some(b'|')
    } else {
        None
    };
    match branch_sep {
        Some(sep) => {
            let mut branches: Vec<Vec<UnaryOp>> = vec![Vec::new()];
            for t in &toks {
                match t {
                    Tok::Op(op) => branches.last_mut().expect("non-empty").push(*op),
                    Tok::Sep(s, pos) if *s == sep => {
                        if branches.len() == 2 {
                            return Err(perr(
                                *pos,
                                format!(
                                    "TREE has exactly two branches: unexpected second `{}`",
                                    sep as char
                                ),
                            ));
                        }
                        branches.push(Vec::new());
                    }
                    Tok::Sep(..) => {}
                }
            }
            if branches.len() != 2 {
                return Err(perr(
                    open,
                    format!("TREE needs two branches separated by `{}`", sep as char),
                ));
            }
            let second = branches.pop().expect("two");
            let first = branches.pop().expect("two");
            Ok([first, second])
        }
        None => {
            let mut ops: Vec<UnaryOp> = toks
                .iter()
                .filter_map(|t| match t {
                    Tok::Op(op) => Some(*op),
                    Tok::Sep(..) => None,
                })
                .collect();
            if !ops.len().is_multiple_of(2) {
                return Err(perr(
                    open + 1,
                    format!(
                        "a TREE list without `~` is split in half between the branches, so it needs an even number of ops, found {}",
                        ops.len()
                    ),
                ));
            }
            let second = ops.split_off(ops.len() / 2);
            Ok([ops, second])
        }
    }
}
