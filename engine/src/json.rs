//! A small, allocation-free JSON reader for flat sensor payloads: it walks one
//! top-level object, hands each member's raw value to the caller, and
//! validates (and skips) everything else, nested values included.

use crate::prelude::*;

/// How deeply nested a skipped value may be.
const MAX_DEPTH: usize = 64;

/// A member's value, still raw.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Raw<'a> {
    /// The number's text, validated against JSON's grammar.
    Number(&'a str),
    /// The string's bytes between the quotes, escapes not yet resolved.
    Str {
        raw: &'a [u8],
        escaped: bool,
    },
    Bool(bool),
    Null,
    /// An object or array.
    Composite,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JsonError;

struct Cursor<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Cursor<'a> {
    #[inline]
    fn ws(&mut self) {
        while let Some(&c) = self.b.get(self.i) {
            if matches!(c, b' ' | b'\t' | b'\n' | b'\r') {
                self.i += 1;
            } else {
                break;
            }
        }
    }

    #[inline]
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    #[inline]
    fn expect(&mut self, c: u8) -> Result<(), JsonError> {
        if self.peek() == Some(c) {
            self.i += 1;
            Ok(())
        } else {
            Err(JsonError)
        }
    }

    /// After the opening quote: returns the raw contents and whether escapes occur.
    fn string(&mut self) -> Result<(&'a [u8], bool), JsonError> {
        let start = self.i;
        let mut escaped = false;
        loop {
            let c = *self.b.get(self.i).ok_or(JsonError)?;
            match c {
                b'"' => {
                    let s = &self.b[start..self.i];
                    self.i += 1;
                    return Ok((s, escaped));
                }
                b'\\' => {
                    escaped = true;
                    let e = *self.b.get(self.i + 1).ok_or(JsonError)?;
                    match e {
                        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => self.i += 2,
                        b'u' => {
                            let hex = self.b.get(self.i + 2..self.i + 6).ok_or(JsonError)?;
                            if !hex.iter().all(u8::is_ascii_hexdigit) {
                                return Err(JsonError);
                            }
                            self.i += 6;
                        }
                        _ => return Err(JsonError),
                    }
                }
                0..=0x1f => return Err(JsonError),
                _ => self.i += 1,
            }
        }
    }

    fn number(&mut self) -> Result<&'a str, JsonError> {
        let start = self.i;
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        match self.peek() {
            Some(b'0') => self.i += 1,
            Some(b'1'..=b'9') => self.digits(),
            _ => return Err(JsonError),
        }
        if self.peek() == Some(b'.') {
            self.i += 1;
            if !matches!(self.peek(), Some(b'0'..=b'9')) {
                return Err(JsonError);
            }
            self.digits();
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.i += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.i += 1;
            }
            if !matches!(self.peek(), Some(b'0'..=b'9')) {
                return Err(JsonError);
            }
            self.digits();
        }
        // the bytes are ASCII digits and signs: valid UTF-8
        core::str::from_utf8(&self.b[start..self.i]).map_err(|_| JsonError)
    }

    #[inline]
    fn digits(&mut self) {
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.i += 1;
        }
    }

    fn literal(&mut self, word: &[u8]) -> Result<(), JsonError> {
        if self.b.get(self.i..self.i + word.len()) == Some(word) {
            self.i += word.len();
            Ok(())
        } else {
            Err(JsonError)
        }
    }

    fn value(&mut self) -> Result<Raw<'a>, JsonError> {
        self.ws();
        match self.peek().ok_or(JsonError)? {
            b'"' => {
                self.i += 1;
                let (raw, escaped) = self.string()?;
                Ok(Raw::Str { raw, escaped })
            }
            b't' => self.literal(b"true").map(|_| Raw::Bool(true)),
            b'f' => self.literal(b"false").map(|_| Raw::Bool(false)),
            b'n' => self.literal(b"null").map(|_| Raw::Null),
            b'{' | b'[' => self.skip_composite().map(|_| Raw::Composite),
            _ => self.number().map(Raw::Number),
        }
    }

    /// Skips a nested object or array iteratively, validating it; depth-limited.
    fn skip_composite(&mut self) -> Result<(), JsonError> {
        // stack of open brackets as a bitset: 1 = object, 0 = array
        let mut stack: u64 = 0;
        let mut depth = 0usize;
        loop {
            self.ws();
            let c = self.peek().ok_or(JsonError)?;
            match c {
                b'{' | b'[' => {
                    if depth == MAX_DEPTH {
                        return Err(JsonError);
                    }
                    self.i += 1;
                    if c == b'{' {
                        stack |= 1 << depth;
                    } else {
                        stack &= !(1 << depth);
                    }
                    depth += 1;
                    self.ws();
                    let close = if c == b'{' { b'}' } else { b']' };
                    if self.peek() == Some(close) {
                        self.i += 1;
                        depth -= 1;
                        if depth == 0 {
                            return Ok(());
                        }
                        if self.closed(&mut depth, stack)? {
                            return Ok(());
                        }
                        continue;
                    }
                    if c == b'{' {
                        self.member_name()?;
                    }
                }
                _ => {
                    if depth == 0 {
                        return Err(JsonError);
                    }
                    // a scalar element
                    match c {
                        b'"' => {
                            self.i += 1;
                            self.string()?;
                        }
                        b't' => self.literal(b"true")?,
                        b'f' => self.literal(b"false")?,
                        b'n' => self.literal(b"null")?,
                        _ => {
                            self.number()?;
                        }
                    }
                    if self.closed(&mut depth, stack)? {
                        return Ok(());
                    }
                }
            }
        }
    }

    /// Reads `"name" :` inside an object being skipped.
    fn member_name(&mut self) -> Result<(), JsonError> {
        self.ws();
        self.expect(b'"')?;
        self.string()?;
        self.ws();
        self.expect(b':')
    }

    /// Consumes `,` (then a member name if in an object) or closing brackets.
    /// Returns true when the outermost composite has closed.
    fn closed(&mut self, depth: &mut usize, stack: u64) -> Result<bool, JsonError> {
        loop {
            self.ws();
            let in_object = (stack >> (*depth - 1)) & 1 == 1;
            match self.peek().ok_or(JsonError)? {
                b',' => {
                    self.i += 1;
                    if in_object {
                        self.member_name()?;
                    }
                    return Ok(false);
                }
                b'}' if in_object => {}
                b']' if !in_object => {}
                _ => return Err(JsonError),
            }
            self.i += 1;
            *depth -= 1;
            if *depth == 0 {
                return Ok(true);
            }
        }
    }
}

/// Walks a top-level JSON object, calling `f(raw_name, name_escaped, value)`
/// for each member in order. Anything but one object (plus whitespace) is an error.
pub fn for_each_member<'a>(
    input: &'a [u8],
    mut f: impl FnMut(&'a [u8], bool, Raw<'a>),
) -> Result<(), JsonError> {
    let mut c = Cursor { b: input, i: 0 };
    c.ws();
    c.expect(b'{')?;
    c.ws();
    if c.peek() == Some(b'}') {
        c.i += 1;
    } else {
        loop {
            c.ws();
            c.expect(b'"')?;
            let (name, esc) = c.string()?;
            c.ws();
            c.expect(b':')?;
            let v = c.value()?;
            f(name, esc, v);
            c.ws();
            match c.peek() {
                Some(b',') => c.i += 1,
                Some(b'}') => {
                    c.i += 1;
                    break;
                }
                _ => return Err(JsonError),
            }
        }
    }
    c.ws();
    if c.i != input.len() {
        return Err(JsonError);
    }
    Ok(())
}

/// Resolves a JSON string's escapes, pushing chars to `push`; stops on a bad
/// escape or when `push` refuses (e.g. the destination is full).
pub fn unescape<E>(raw: &[u8], mut push: impl FnMut(char) -> Result<(), E>) -> Result<(), Unescape<E>> {
    let s = core::str::from_utf8(raw).map_err(|_| Unescape::Invalid)?;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            push(c).map_err(Unescape::Refused)?;
            continue;
        }
        let e = chars.next().ok_or(Unescape::Invalid)?;
        let out = match e {
            '"' => '"',
            '\\' => '\\',
            '/' => '/',
            'b' => '\u{8}',
            'f' => '\u{c}',
            'n' => '\n',
            'r' => '\r',
            't' => '\t',
            'u' => {
                let hi = hex4(&mut chars).ok_or(Unescape::Invalid)?;
                if (0xD800..0xDC00).contains(&hi) {
                    if chars.next() != Some('\\') || chars.next() != Some('u') {
                        return Err(Unescape::Invalid);
                    }
                    let lo = hex4(&mut chars).ok_or(Unescape::Invalid)?;
                    if !(0xDC00..0xE000).contains(&lo) {
                        return Err(Unescape::Invalid);
                    }
                    char::from_u32(0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00))
                        .ok_or(Unescape::Invalid)?
                } else {
                    char::from_u32(hi).ok_or(Unescape::Invalid)?
                }
            }
            _ => return Err(Unescape::Invalid),
        };
        push(out).map_err(Unescape::Refused)?;
    }
    Ok(())
}

fn hex4(chars: &mut core::str::Chars<'_>) -> Option<u32> {
    let mut v = 0;
    for _ in 0..4 {
        v = v * 16 + chars.next().and_then(|c| c.to_digit(16))?;
    }
    Some(v)
}

/// Why [`unescape`] stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unescape<E> {
    /// A malformed escape or invalid UTF-8.
    Invalid,
    /// The `push` callback refused a char.
    Refused(E),
}

/// Compares a raw (possibly escaped) member name with `want`, without allocating.
pub fn name_eq(raw: &[u8], escaped: bool, want: &str) -> bool {
    if !escaped {
        return raw == want.as_bytes();
    }
    let mut rest = want.chars();
    unescape(raw, |c| if rest.next() == Some(c) { Ok(()) } else { Err(()) }).is_ok() && rest.next().is_none()
}

/// Writes `s` as a JSON string (with quotes) into `out`.
pub fn write_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let esc: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..=0x1f => {
                out.extend_from_slice(&bytes[start..i]);
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(&[
                    b'\\',
                    b'u',
                    b'0',
                    b'0',
                    HEX[(b >> 4) as usize],
                    HEX[(b & 15) as usize],
                ]);
                start = i + 1;
                continue;
            }
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        out.extend_from_slice(esc);
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(s: &str) -> Result<Vec<(String, Raw<'_>)>, JsonError> {
        let mut v = Vec::new();
        for_each_member(s.as_bytes(), |n, _, r| v.push((String::from_utf8_lossy(n).into_owned(), r)))?;
        Ok(v)
    }

    #[test]
    fn reads_flat_objects() {
        let m = members(r#" {"ts": 1700000000123, "v": -2.5e3, "s":"a\"b", "b":true, "n":null} "#).unwrap();
        assert_eq!(m[0], ("ts".into(), Raw::Number("1700000000123")));
        assert_eq!(m[1], ("v".into(), Raw::Number("-2.5e3")));
        assert_eq!(m[2].1, Raw::Str { raw: br#"a\"b"#, escaped: true });
        assert_eq!(m[3].1, Raw::Bool(true));
        assert_eq!(m[4].1, Raw::Null);
        assert!(members("{}").unwrap().is_empty());
    }

    #[test]
    fn skips_nested_values() {
        let m = members(r#"{"a":{"x":[1,2,{"y":[]}],"z":{}},"b":[[],[1,"]"]],"c":3}"#).unwrap();
        assert_eq!(m.len(), 3);
        assert_eq!(m[0].1, Raw::Composite);
        assert_eq!(m[1].1, Raw::Composite);
        assert_eq!(m[2].1, Raw::Number("3"));
    }

    #[test]
    fn refuses_malformed() {
        for bad in [
            "",
            "[]",
            "{",
            "{\"a\"}",
            "{\"a\":}",
            "{\"a\":1,}",
            "{\"a\":01}",
            "{\"a\":1.}",
            "{\"a\":NaN}",
            "{\"a\":[1,]}",
            "{\"a\":{\"b\"}}",
            "{\"a\":1} x",
            "{\"a\":\"\\x\"}",
            "{\"a\":[1}",
            "{\"a\":{]}",
            "{\"a\":tru}",
            "{\"a\":\"unterminated}",
        ] {
            assert!(members(bad).is_err(), "accepted {bad:?}");
        }
        let deep = format!("{{\"a\":{}{}}}", "[".repeat(100), "]".repeat(100));
        assert!(members(&deep).is_err());
    }

    #[test]
    fn escapes() {
        assert!(name_eq(br"\u0074s", true, "ts"));
        assert!(!name_eq(br"\u0074sx", true, "ts"));
        let mut s = String::new();
        unescape(br"a\u00e9\ud83d\ude00\n", |c| {
            s.push(c);
            Ok::<(), ()>(())
        })
        .unwrap();
        assert_eq!(s, "aé😀\n");
        let mut out = Vec::new();
        write_str(&mut out, "a\"b\\\u{1}");
        assert_eq!(out, br#""a\"b\\\u0001""#);
    }
}
