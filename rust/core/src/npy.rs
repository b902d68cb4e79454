//! `.npy` header encoding and decoding.
//!
//! We write format 1.0 (2.0 when the header length does not fit a u16, 3.0 when the dict is
//! not Latin-1) with the dict padded by spaces so the payload starts at [`NPY_DATA_ALIGN`];
//! a dict too long for that page, or a zero-byte payload, gets the standard 64-byte layout.
//! We read any valid header: formats 1.0, 2.0 and 3.0, any alignment, keys in any order and
//! Python literal syntax. `descr` is returned as its literal text, for Python to evaluate; we
//! never interpret it. Absurdly long headers are refused before they are read.

use std::fmt::Write as _;
use std::ops::Range;
use std::os::fd::AsFd;

use crate::dir::CacheDir;
use crate::error::{Error, Result, to_u64, to_usize};

/// The `.npy` magic string.
pub const NPY_MAGIC: &[u8; 6] = b"\x93NUMPY";

/// Where we put the payload: one page, so a stored entry can be mapped and reflinked
/// block-aligned, and the largest alignment stock `np.load` accepts (it refuses headers over
/// 10000 bytes by default).
pub const NPY_DATA_ALIGN: u64 = 4096;

/// The alignment the format itself requires of the header end (`ARRAY_ALIGN` in `NumPy`).
pub const NPY_ARRAY_ALIGN: u64 = 64;

/// The longest header we read: far beyond any real dtype description, small enough to read
/// into memory without a second thought.
pub const MAX_HEADER_LEN: u64 = 1 << 20;

/// Bytes before the dict text in format 1.0 (magic, version, u16 length).
const PREAMBLE_V1: u64 = 10;
/// Bytes before the dict text in formats 2.0 and 3.0 (magic, version, u32 length).
const PREAMBLE_V2: u64 = 12;

/// A decoded `.npy` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NpyHeader {
    /// The literal text of the `descr` value, e.g. `'<f8'` or `[('x', '<f4')]`.
    pub descr: String,
    /// Whether the payload is in Fortran order.
    pub fortran_order: bool,
    /// The array shape.
    pub shape: Vec<u64>,
    /// Byte offset of the payload.
    pub data_offset: u64,
    /// Length of the whole file (as given to the decoder).
    pub file_len: u64,
    /// Format version `(major, minor)`.
    pub version: (u8, u8),
}

/// The fixed-size start of a header: version and where the dict ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Preamble {
    /// Format version.
    pub version: (u8, u8),
    /// Length of magic + version + length field.
    pub prefix_len: u64,
    /// Length of the dict text (`HEADER_LEN`).
    pub header_len: u64,
}

impl Preamble {
    /// Offset of the payload.
    pub fn data_offset(&self) -> u64 {
        self.prefix_len + self.header_len
    }
}

/// Bytes needed to decode a [`Preamble`].
pub const PREAMBLE_MAX: usize = 12;

/// Decodes the magic, version and header length.
///
/// # Errors
/// A reason string for a wrong magic, an unknown version, a truncated preamble or a header
/// longer than [`MAX_HEADER_LEN`].
pub fn parse_preamble(bytes: &[u8]) -> Result<Preamble, String> {
    if bytes.len() < 8 || !bytes.starts_with(NPY_MAGIC) {
        return Err("not a .npy file (bad magic)".to_owned());
    }
    let version = (bytes[6], bytes[7]);
    let (prefix_len, header_len) = match version {
        (1, 0) => match bytes.get(8..10) {
            Some(&[lo, hi]) => (PREAMBLE_V1, u64::from(u16::from_le_bytes([lo, hi]))),
            _ => return Err("truncated header length".to_owned()),
        },
        (2 | 3, 0) => match bytes.get(8..12) {
            Some(&[a, b, c, d]) => (PREAMBLE_V2, u64::from(u32::from_le_bytes([a, b, c, d]))),
            _ => return Err("truncated header length".to_owned()),
        },
        (major, minor) => return Err(format!("unsupported format version {major}.{minor}")),
    };
    if header_len > MAX_HEADER_LEN {
        return Err(format!("header length {header_len} exceeds {MAX_HEADER_LEN}"));
    }
    Ok(Preamble {
        version,
        prefix_len,
        header_len,
    })
}

/// Decodes a whole header from `bytes` (which hold at least the preamble and the dict).
///
/// # Errors
/// A reason string for any malformed header, or one whose payload offset is past `file_len`.
pub fn decode_header(bytes: &[u8], file_len: u64) -> Result<NpyHeader, String> {
    let preamble = parse_preamble(bytes)?;
    let data_offset = preamble.data_offset();
    if data_offset > file_len {
        return Err(format!(
            "header claims {data_offset} bytes but the file holds {file_len}"
        ));
    }
    let start = to_usize(preamble.prefix_len).map_err(|err| err.to_string())?;
    let end = to_usize(data_offset).map_err(|err| err.to_string())?;
    let raw = bytes.get(start..end).ok_or_else(|| "truncated header".to_owned())?;
    let text: String = if preamble.version.0 == 3 {
        std::str::from_utf8(raw)
            .map_err(|_| "format 3.0 header is not UTF-8".to_owned())?
            .to_owned()
    } else {
        raw.iter().map(|&byte| char::from(byte)).collect()
    };
    let dict = parse_dict(&text)?;
    Ok(NpyHeader {
        descr: dict.descr,
        fortran_order: dict.fortran_order,
        shape: dict.shape,
        data_offset,
        file_len,
        version: preamble.version,
    })
}

/// The dict text `NumPy` would write for these values.
fn dict_text(descr: &str, fortran_order: bool, shape: &[u64]) -> String {
    let mut shape_text = String::from("(");
    for (index, dim) in shape.iter().enumerate() {
        if index > 0 {
            shape_text.push_str(", ");
        }
        let _ = write!(shape_text, "{dim}");
    }
    if shape.len() == 1 {
        shape_text.push(',');
    }
    shape_text.push(')');
    let order = if fortran_order { "True" } else { "False" };
    format!("{{'descr': {descr}, 'fortran_order': {order}, 'shape': {shape_text}, }}")
}

fn round_up(value: u64, align: u64) -> Option<u64> {
    value.checked_next_multiple_of(align)
}

/// Encodes a header for a payload of `payload_len` bytes; `descr` is a Python literal.
///
/// # Errors
/// A reason string when `descr` is not a literal we can read back, or the header is too long.
pub fn encode_header(descr: &str, fortran_order: bool, shape: &[u64], payload_len: u64) -> Result<Vec<u8>, String> {
    let text = dict_text(descr, fortran_order, shape);
    let parsed = parse_dict(&text)?;
    if parsed.descr != descr.trim() || parsed.shape != shape {
        return Err(format!("descr {descr:?} is not a single Python literal"));
    }
    let latin1: Option<Vec<u8>> = text.chars().map(|c| u8::try_from(u32::from(c)).ok()).collect();
    let (major, dict_bytes) = match latin1 {
        Some(bytes) => (1u8, bytes),
        None => (3u8, text.into_bytes()),
    };
    let dict_len = to_u64(dict_bytes.len());
    let with_newline = |prefix: u64| prefix.checked_add(dict_len).and_then(|n| n.checked_add(1));
    let mut prefix = if major == 1 { PREAMBLE_V1 } else { PREAMBLE_V2 };
    let needed = with_newline(prefix).ok_or("header too long")?;
    let mut total = if payload_len > 0 && needed <= NPY_DATA_ALIGN {
        NPY_DATA_ALIGN
    } else {
        round_up(needed, NPY_ARRAY_ALIGN).ok_or("header too long")?
    };
    let mut version = (major, 0u8);
    if major == 1 && total - prefix > u64::from(u16::MAX) {
        prefix = PREAMBLE_V2;
        version = (2, 0);
        total = round_up(with_newline(prefix).ok_or("header too long")?, NPY_ARRAY_ALIGN).ok_or("header too long")?;
    }
    let header_len = total - prefix;
    if header_len > MAX_HEADER_LEN {
        return Err(format!("header length {header_len} exceeds {MAX_HEADER_LEN}"));
    }
    let mut out = Vec::with_capacity(to_usize(total).map_err(|err| err.to_string())?);
    out.extend_from_slice(NPY_MAGIC);
    out.extend_from_slice(&[version.0, version.1]);
    if prefix == PREAMBLE_V1 {
        let len = u16::try_from(header_len).map_err(|_| "header too long".to_owned())?;
        out.extend_from_slice(&len.to_le_bytes());
    } else {
        let len = u32::try_from(header_len).map_err(|_| "header too long".to_owned())?;
        out.extend_from_slice(&len.to_le_bytes());
    }
    out.extend_from_slice(&dict_bytes);
    out.resize(to_usize(total - 1).map_err(|err| err.to_string())?, b' ');
    out.push(b'\n');
    Ok(out)
}

impl CacheDir {
    /// Reads and decodes the `.npy` header of `name` (usually one 4 KiB pread).
    ///
    /// # Errors
    /// [`Error::InvalidName`]; [`Error::Io`] with [`Op::Open`], [`Op::Stat`] or [`Op::Read`];
    /// [`Error::InvalidHeader`] for a malformed header or one longer than the file.
    ///
    /// [`Op::Open`]: crate::Op::Open
    /// [`Op::Stat`]: crate::Op::Stat
    /// [`Op::Read`]: crate::Op::Read
    pub fn read_header(&self, name: &str) -> Result<NpyHeader> {
        let fd = self.open_read(name)?;
        let path = self.path_of(name);
        let file_len = self.file_len(fd.as_fd(), name)?;
        let invalid = |reason: String| Error::InvalidHeader {
            path: path.clone(),
            reason,
        };
        let first = to_usize(file_len.min(NPY_DATA_ALIGN))?;
        let mut bytes = vec![0u8; first];
        crate::copy::read_exact_at(self.fs(), fd.as_fd(), &path, &mut bytes, 0)?;
        let preamble = parse_preamble(&bytes).map_err(invalid)?;
        let end = preamble.data_offset();
        if end > file_len {
            return Err(invalid(format!(
                "header claims {end} bytes but the file holds {file_len}"
            )));
        }
        if end > to_u64(bytes.len()) {
            let already = bytes.len();
            bytes.resize(to_usize(end)?, 0);
            let rest = bytes.get_mut(already..).unwrap_or_default();
            crate::copy::read_exact_at(self.fs(), fd.as_fd(), &path, rest, to_u64(already))?;
        }
        decode_header(&bytes, file_len).map_err(invalid)
    }
}

// ---- a small parser for the Python literal subset NumPy headers use ----

struct Dict {
    descr: String,
    fortran_order: bool,
    shape: Vec<u64>,
}

#[derive(Debug, Clone, PartialEq)]
enum Value {
    Str(String),
    Int(i128),
    Bool(bool),
    None,
    Tuple(Vec<Value>),
    List(Vec<Value>),
    Dict(Vec<(Value, Value)>),
}

/// Nesting limit: real descrs nest a few levels; this keeps hostile input from recursing deep.
const MAX_DEPTH: usize = 64;

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

    fn skip_ws(&mut self) {
        while self
            .peek()
            .is_some_and(|c| matches!(c, ' ' | '\t' | '\n' | '\r' | '\x0c'))
        {
            self.pos += 1;
        }
    }

    fn expect(&mut self, wanted: char) -> Result<(), String> {
        self.skip_ws();
        match self.bump() {
            Some(c) if c == wanted => Ok(()),
            Some(c) => Err(format!(
                "expected {wanted:?} at byte {}, found {c:?}",
                self.pos - c.len_utf8()
            )),
            None => Err(format!("expected {wanted:?}, found end of header")),
        }
    }

    /// Parses one value; returns it with the byte range of its text.
    fn value(&mut self, depth: usize) -> Result<(Value, Range<usize>), String> {
        if depth > MAX_DEPTH {
            return Err("literal nested too deeply".to_owned());
        }
        self.skip_ws();
        let start = self.pos;
        let value = match self.peek() {
            Some('{') => self.dict(depth)?,
            Some('(') => self.sequence(depth, '(', ')')?,
            Some('[') => self.sequence(depth, '[', ']')?,
            Some('\'' | '"') => Value::Str(self.string()?),
            Some(c) if c.is_ascii_digit() || c == '-' || c == '+' => Value::Int(self.int()?),
            Some(c) if c.is_ascii_alphabetic() => self.word()?,
            Some(c) => return Err(format!("unexpected {c:?} at byte {start}")),
            None => return Err("unexpected end of header".to_owned()),
        };
        Ok((value, start..self.pos))
    }

    fn dict(&mut self, depth: usize) -> Result<Value, String> {
        self.expect('{')?;
        let mut items = Vec::new();
        loop {
            self.skip_ws();
            if self.peek() == Some('}') {
                self.pos += 1;
                return Ok(Value::Dict(items));
            }
            let (key, _) = self.value(depth + 1)?;
            self.expect(':')?;
            let (value, _) = self.value(depth + 1)?;
            items.push((key, value));
            self.skip_ws();
            match self.bump() {
                Some(',') => {}
                Some('}') => return Ok(Value::Dict(items)),
                _ => return Err("expected ',' or '}' in dict".to_owned()),
            }
        }
    }

    /// A tuple or list. `(x)` without a comma is just `x`, as in Python.
    fn sequence(&mut self, depth: usize, open: char, close: char) -> Result<Value, String> {
        self.expect(open)?;
        let mut items = Vec::new();
        let mut saw_comma = false;
        loop {
            self.skip_ws();
            if self.peek() == Some(close) {
                self.pos += 1;
                break;
            }
            let (item, _) = self.value(depth + 1)?;
            items.push(item);
            self.skip_ws();
            match self.bump() {
                Some(',') => saw_comma = true,
                Some(c) if c == close => break,
                _ => return Err(format!("expected ',' or {close:?}")),
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

    fn string(&mut self) -> Result<String, String> {
        let quote = self.bump().ok_or("unexpected end of header")?;
        let mut out = String::new();
        loop {
            match self.bump() {
                None | Some('\n') => return Err("unterminated string".to_owned()),
                Some(c) if c == quote => return Ok(out),
                Some('\\') => match self.bump() {
                    Some('n') => out.push('\n'),
                    Some('t') => out.push('\t'),
                    Some(c @ ('\\' | '\'' | '"')) => out.push(c),
                    Some(c) => {
                        out.push('\\');
                        out.push(c);
                    }
                    None => return Err("unterminated string".to_owned()),
                },
                Some(c) => out.push(c),
            }
        }
    }

    fn int(&mut self) -> Result<i128, String> {
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
                    .ok_or("integer too large")?;
                digits += 1;
            } else if c != '_' || digits == 0 {
                break;
            }
            self.pos += 1;
        }
        if digits == 0 {
            return Err("expected digits".to_owned());
        }
        // Python 2 era files spell long integers with a trailing L.
        if matches!(self.peek(), Some('L' | 'l')) {
            self.pos += 1;
        }
        if matches!(self.peek(), Some('.' | 'e' | 'E' | 'j' | 'x' | 'X')) {
            return Err("only integer numbers are allowed in a .npy header".to_owned());
        }
        Ok(if negative { -value } else { value })
    }

    /// `True`, `False`, `None`, or a prefixed string (`u'..'`, `b'..'`, `r'..'`).
    fn word(&mut self) -> Result<Value, String> {
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
            other => Err(format!("unexpected name {other:?}")),
        }
    }
}

fn parse_dict(text: &str) -> Result<Dict, String> {
    let mut parser = Parser { text, pos: 0 };
    parser.skip_ws();
    if parser.peek() != Some('{') {
        return Err("header is not a dict".to_owned());
    }
    let mut descr: Option<String> = None;
    let mut fortran_order: Option<bool> = None;
    let mut shape: Option<Vec<u64>> = None;
    parser.expect('{')?;
    loop {
        parser.skip_ws();
        if parser.peek() == Some('}') {
            parser.pos += 1;
            break;
        }
        let (key, _) = parser.value(1)?;
        parser.expect(':')?;
        let (value, span) = parser.value(1)?;
        match key {
            Value::Str(key) if key == "descr" => {
                if !matches!(value, Value::Str(_) | Value::List(_) | Value::Tuple(_)) {
                    return Err("'descr' must be a string, list or tuple".to_owned());
                }
                descr = Some(text.get(span).unwrap_or_default().trim().to_owned());
            }
            Value::Str(key) if key == "fortran_order" => match value {
                Value::Bool(flag) => fortran_order = Some(flag),
                _ => return Err("'fortran_order' must be True or False".to_owned()),
            },
            Value::Str(key) if key == "shape" => shape = Some(shape_of(value)?),
            other => return Err(format!("unexpected key {other:?}")),
        }
        parser.skip_ws();
        match parser.bump() {
            Some(',') => {}
            Some('}') => break,
            _ => return Err("expected ',' or '}' in the header dict".to_owned()),
        }
    }
    parser.skip_ws();
    if parser.pos != text.len() {
        return Err(format!("unexpected text after the header dict at byte {}", parser.pos));
    }
    match (descr, fortran_order, shape) {
        (Some(descr), Some(fortran_order), Some(shape)) => Ok(Dict {
            descr,
            fortran_order,
            shape,
        }),
        _ => Err("header must have exactly the keys 'descr', 'fortran_order' and 'shape'".to_owned()),
    }
}

fn shape_of(value: Value) -> Result<Vec<u64>, String> {
    let Value::Tuple(items) = value else {
        return Err("'shape' must be a tuple".to_owned());
    };
    items
        .into_iter()
        .map(|item| match item {
            Value::Int(dim) => u64::try_from(dim).map_err(|_| format!("invalid dimension {dim}")),
            _ => Err("'shape' must hold integers".to_owned()),
        })
        .collect()
}

#[cfg(test)]
// Tests state their expectations with unwrap/expect/panic; the workspace denies them elsewhere.
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    /// A `'aaa…'` string descr whose format 1.0 header needs exactly `needed` bytes including
    /// the newline (shape `(1,)`, C order).
    fn descr_needing(needed: u64) -> String {
        let base = to_u64(dict_text("''", false, &[1]).len()) + PREAMBLE_V1 + 1;
        let filler = to_usize(needed - base).unwrap();
        format!("'{}'", "a".repeat(filler))
    }

    fn header_len_v1(encoded: &[u8]) -> u64 {
        u64::from(u16::from_le_bytes([encoded[8], encoded[9]]))
    }

    #[test]
    fn shape_text_spells_0_d_1_tuple_and_n_d_like_python() {
        let cases: [(&[u64], &str); 4] = [
            (&[], "()"),
            (&[7], "(7,)"),
            (&[2, 3], "(2, 3)"),
            (&[0, 1, 2], "(0, 1, 2)"),
        ];
        for (shape, text) in cases {
            let dict = dict_text("'<f8'", false, shape);
            assert_eq!(
                dict,
                format!("{{'descr': '<f8', 'fortran_order': False, 'shape': {text}, }}"),
                "{shape:?}"
            );
        }
        assert!(dict_text("'<f8'", true, &[1]).contains("'fortran_order': True"));
    }

    #[test]
    fn zero_d_and_one_tuple_shapes_survive_an_encode_decode_round_trip() {
        for shape in [&[][..], &[1][..], &[12345][..]] {
            let encoded = encode_header("'<i2'", false, shape, 2).unwrap();
            let header = decode_header(&encoded, NPY_DATA_ALIGN + 2).unwrap();
            assert_eq!(header.shape, shape);
        }
    }

    #[test]
    fn padding_lands_data_at_4096_even_when_the_dict_fills_the_page_exactly() {
        let descr = descr_needing(NPY_DATA_ALIGN);

        let encoded = encode_header(&descr, false, &[1], 8).unwrap();

        assert_eq!(to_u64(encoded.len()), NPY_DATA_ALIGN);
        assert_eq!(header_len_v1(&encoded), NPY_DATA_ALIGN - PREAMBLE_V1);
        assert_eq!(encoded[encoded.len() - 2], b'}', "no room left for padding");
        assert_eq!(encoded.last(), Some(&b'\n'));
    }

    #[test]
    fn padding_is_spaces_between_the_dict_and_the_final_newline() {
        let encoded = encode_header("'<f8'", false, &[4], 32).unwrap();
        let dict = dict_text("'<f8'", false, &[4]);
        let dict_end = 10 + dict.len();

        assert_eq!(&encoded[10..dict_end], dict.as_bytes());
        assert!(encoded[dict_end..encoded.len() - 1].iter().all(|&byte| byte == b' '));
        assert_eq!(encoded.last(), Some(&b'\n'));
    }

    #[test]
    fn one_byte_past_the_page_falls_back_to_64_byte_alignment() {
        let descr = descr_needing(NPY_DATA_ALIGN + 1);

        let encoded = encode_header(&descr, false, &[1], 8).unwrap();

        assert_eq!(to_u64(encoded.len()), NPY_DATA_ALIGN + NPY_ARRAY_ALIGN);
        let header = decode_header(&encoded, to_u64(encoded.len()) + 8).unwrap();
        assert_eq!(header.descr, descr);
    }

    #[test]
    fn zero_byte_payload_gets_64_byte_alignment_instead_of_a_page() {
        for needed in [11 + 64, 1000, NPY_DATA_ALIGN - 1] {
            let descr = descr_needing(needed);

            let encoded = encode_header(&descr, false, &[1], 0).unwrap();

            assert_eq!(
                to_u64(encoded.len()),
                needed.next_multiple_of(NPY_ARRAY_ALIGN),
                "{needed}"
            );
            let header = decode_header(&encoded, to_u64(encoded.len())).unwrap();
            assert_eq!(header.data_offset, to_u64(encoded.len()));
        }
    }

    #[test]
    fn non_latin1_header_uses_a_four_byte_length_and_still_lands_data_at_4096() {
        let encoded = encode_header("[('θ', '<f4')]", false, &[3], 12).unwrap();

        assert_eq!(to_u64(encoded.len()), NPY_DATA_ALIGN);
        let header_len = u32::from_le_bytes([encoded[8], encoded[9], encoded[10], encoded[11]]);
        assert_eq!(u64::from(header_len), NPY_DATA_ALIGN - PREAMBLE_V2);
    }

    #[test]
    fn latin1_beyond_ascii_stays_format_1_as_latin1_bytes() {
        let encoded = encode_header("[('é', '<f4')]", false, &[3], 12).unwrap();

        assert_eq!(&encoded[6..8], b"\x01\x00");
        assert!(encoded.windows(3).any(|window| window == b"'\xe9'"));
        let header = decode_header(&encoded, NPY_DATA_ALIGN + 12).unwrap();
        assert_eq!(header.descr, "[('é', '<f4')]");
    }

    #[test]
    fn header_too_long_to_read_back_is_refused_when_encoding() {
        let descr = format!("'{}'", "a".repeat(usize::try_from(MAX_HEADER_LEN).unwrap()));

        let err = encode_header(&descr, false, &[1], 8).unwrap_err();

        assert!(err.contains("exceeds"), "{err}");
    }

    #[test]
    fn parenthesised_int_is_not_a_tuple_shape() {
        let text = "{'descr': '<f8', 'fortran_order': False, 'shape': (5), }";

        let err = parse_dict(text).err().unwrap();

        assert!(err.contains("tuple"), "{err}");
        assert_eq!(
            parse_dict("{'descr': '<f8', 'fortran_order': False, 'shape': (5,), }")
                .unwrap()
                .shape,
            [5]
        );
    }

    #[test]
    fn hostile_nesting_is_refused_without_deep_recursion() {
        let deep = format!("{}'<f8'{}", "[".repeat(10_000), "]".repeat(10_000));
        let text = format!("{{'descr': {deep}, 'fortran_order': False, 'shape': (1,), }}");

        let err = parse_dict(&text).err().unwrap();

        assert!(err.contains("nested too deeply"), "{err}");
    }

    #[test]
    fn descr_text_is_kept_verbatim_for_python_to_evaluate() {
        let descr = "[('x', '<f8', (2, 3)), ('name', '<U5')]";
        let text = format!("{{'descr':   {descr}  , 'fortran_order': False, 'shape': (1,), }}");

        assert_eq!(parse_dict(&text).unwrap().descr, descr);
    }

    #[test]
    fn duplicate_keys_do_not_count_as_the_missing_ones() {
        let text = "{'descr': '<f8', 'descr': '<f4', 'shape': (1,), }";

        let err = parse_dict(text).err().unwrap();

        assert!(err.contains("exactly the keys"), "{err}");
    }

    fn cache_with(name: &str, content: &[u8]) -> (tempfile::TempDir, CacheDir) {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join(name), content).unwrap();
        let dir = CacheDir::open(tmp.path(), false).unwrap();
        (tmp, dir)
    }

    #[test]
    fn read_header_reads_past_the_first_page_for_a_long_header() {
        let fields: Vec<String> = (0..300).map(|index| format!("('f{index}', '<f8')")).collect();
        let descr = format!("[{}]", fields.join(", "));
        let mut file = encode_header(&descr, false, &[2], 2 * 300 * 8).unwrap();
        assert!(to_u64(file.len()) > NPY_DATA_ALIGN);
        let data_offset = to_u64(file.len());
        file.resize(file.len() + 4800, 0);
        let (_tmp, dir) = cache_with("k.npy", &file);

        let header = dir.read_header("k.npy").unwrap();

        assert_eq!(header.descr, descr);
        assert_eq!(header.data_offset, data_offset);
        assert_eq!(header.file_len, to_u64(file.len()));
    }

    #[test]
    fn read_header_of_a_file_shorter_than_a_page() {
        let file = encode_header("'<u1'", false, &[0], 0).unwrap();
        let (_tmp, dir) = cache_with("k.npy", &file);

        let header = dir.read_header("k.npy").unwrap();

        assert_eq!((header.data_offset, header.file_len), (128, 128));
        assert_eq!(header.shape, [0]);
    }

    #[test]
    fn read_header_refuses_empty_and_truncated_files_as_invalid_headers() {
        let full = encode_header("'<f8'", false, &[2], 16).unwrap();
        let cases: [(&[u8], &str); 3] = [
            (b"", "magic"),
            (b"\x93NUMPY\x01", "magic"),
            (&full[..100], "file holds 100"),
        ];
        for (content, reason) in cases {
            let (_tmp, dir) = cache_with("k.npy", content);

            let err = dir.read_header("k.npy").unwrap_err();

            match err {
                Error::InvalidHeader { path, reason: got } => {
                    assert_eq!(path, dir.path_of("k.npy"));
                    assert!(got.contains(reason), "{got}");
                }
                other => panic!("expected InvalidHeader, got {other:?}"),
            }
        }
    }
}
