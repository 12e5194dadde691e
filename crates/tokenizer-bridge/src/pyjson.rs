//! `tojson` as transformers defines it for chat templates: Python's `json.dumps` with
//! `ensure_ascii=False` and default separators (`", "`, `": "`), keys in insertion order.
//!
//! minijinja's own `tojson` differs (compact separators, HTML-escaped `<>&'`), which
//! would change the tool list Qwen3 was trained to read, so we replace it.

use std::fmt::Write as _;

use minijinja::value::{Kwargs, Value, ValueKind};
use minijinja::{Error, ErrorKind};

/// The `tojson` filter: `x | tojson`, `x | tojson(indent=2)`, `x | tojson(ensure_ascii=true)`.
pub(crate) fn tojson_filter(value: &Value, kwargs: Kwargs) -> Result<Value, Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    let ensure_ascii: Option<bool> = kwargs.get("ensure_ascii")?;
    kwargs.assert_all_used()?;
    let mut out = String::new();
    let style = Style {
        indent,
        ensure_ascii: ensure_ascii.unwrap_or(false),
    };
    write_value(&mut out, value, style, 0)?;
    Ok(Value::from(out))
}

/// Formatting options of `json.dumps` that the filter supports.
#[derive(Clone, Copy)]
struct Style {
    indent: Option<usize>,
    ensure_ascii: bool,
}

fn write_value(out: &mut String, v: &Value, style: Style, level: usize) -> Result<(), Error> {
    match v.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        ValueKind::Number => write_number(out, v)?,
        ValueKind::String => write_str(out, v.as_str().unwrap_or_default(), style.ensure_ascii),
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = v.try_iter()?.collect();
            write_container(out, ('[', ']'), &items, style, level, |out, item, lvl| {
                write_value(out, item, style, lvl)
            })?;
        }
        ValueKind::Map => {
            let keys: Vec<Value> = v.try_iter()?.collect();
            write_container(out, ('{', '}'), &keys, style, level, |out, key, lvl| {
                write_str(out, &key_text(key)?, style.ensure_ascii);
                out.push_str(": ");
                write_value(out, &v.get_item(key)?, style, lvl)
            })?;
        }
        other => {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                format!("tojson: a value of kind {other} is not JSON serializable"),
            ))
        }
    }
    Ok(())
}

/// Writes `[a, b]` or, with an indent, one item per line, as `json.dumps` does.
fn write_container(
    out: &mut String,
    (open, close): (char, char),
    items: &[Value],
    style: Style,
    level: usize,
    mut write_item: impl FnMut(&mut String, &Value, usize) -> Result<(), Error>,
) -> Result<(), Error> {
    out.push(open);
    if items.is_empty() {
        out.push(close);
        return Ok(());
    }
    for (i, item) in items.iter().enumerate() {
        match style.indent {
            // With an indent Python's item separator is "," (no trailing space).
            Some(n) => {
                out.push_str(if i == 0 { "\n" } else { ",\n" });
                out.push_str(&" ".repeat(n * (level + 1)));
            }
            None if i > 0 => out.push_str(", "),
            None => {}
        }
        write_item(out, item, level + 1)?;
    }
    if let Some(n) = style.indent {
        out.push('\n');
        out.push_str(&" ".repeat(n * level));
    }
    out.push(close);
    Ok(())
}

/// Python turns non-string dict keys into strings: `1 -> "1"`, `True -> "true"`, `None -> "null"`.
fn key_text(key: &Value) -> Result<String, Error> {
    if let Some(s) = key.as_str() {
        return Ok(s.to_string());
    }
    let mut out = String::new();
    write_value(
        &mut out,
        key,
        Style {
            indent: None,
            ensure_ascii: false,
        },
        0,
    )?;
    Ok(out)
}

fn write_number(out: &mut String, v: &Value) -> Result<(), Error> {
    if v.is_integer() {
        out.push_str(&v.to_string());
    } else {
        let x = f64::try_from(v.clone())?;
        out.push_str(&py_float_repr(x));
    }
    Ok(())
}

/// Python's `repr(float)` (what `json.dumps` prints): the shortest round-trip digits,
/// positional notation for decimal exponents -4..=15, otherwise `d.ddde+XX`.
pub(crate) fn py_float_repr(x: f64) -> String {
    if x.is_nan() {
        return "NaN".into();
    }
    if x.is_infinite() {
        return if x > 0.0 {
            "Infinity".into()
        } else {
            "-Infinity".into()
        };
    }
    // Rust's `{:e}` also prints the shortest round-trip digits: "-1.2345e-7", "0e0".
    let sci = format!("{x:e}");
    let (mantissa, exp) = sci.split_once('e').expect("LowerExp always has an 'e'");
    let exp: i32 = exp.parse().expect("LowerExp exponent is an integer");
    let (sign, mantissa) = mantissa
        .strip_prefix('-')
        .map_or(("", mantissa), |m| ("-", m));
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    if !(-4..16).contains(&exp) {
        let (head, tail) = digits.split_at(1);
        let dot = if tail.is_empty() {
            String::new()
        } else {
            format!(".{tail}")
        };
        let esign = if exp < 0 { '-' } else { '+' };
        return format!("{sign}{head}{dot}e{esign}{:02}", exp.abs());
    }
    if exp < 0 {
        let zeros = "0".repeat((-exp - 1) as usize);
        return format!("{sign}0.{zeros}{digits}");
    }
    let int_len = exp as usize + 1;
    if digits.len() <= int_len {
        format!("{sign}{digits}{}.0", "0".repeat(int_len - digits.len()))
    } else {
        format!("{sign}{}.{}", &digits[..int_len], &digits[int_len..])
    }
}

/// A JSON string literal with Python's escapes (`\uXXXX` lower-case hex for other controls).
fn write_str(out: &mut String, s: &str, ensure_ascii: bool) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || (ensure_ascii && !c.is_ascii()) => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(template: &str, json: &str) -> String {
        let mut env = minijinja::Environment::new();
        env.add_filter("tojson", tojson_filter);
        let value: Value = serde_json::from_str(json).unwrap();
        env.render_str(template, minijinja::context! { x => value })
            .unwrap()
    }

    #[test]
    fn float_repr_matches_python() {
        // Expected strings are Python 3.11's repr() of the same floats.
        let cases = [
            (0.0, "0.0"),
            (-0.0, "-0.0"),
            (1.0, "1.0"),
            (2.5, "2.5"),
            (0.1, "0.1"),
            (1e-4, "0.0001"),
            (1e-5, "1e-05"),
            (1.5e-7, "1.5e-07"),
            (123456.789, "123456.789"),
            (1e15, "1000000000000000.0"),
            (1e16, "1e+16"),
            (1.2345e21, "1.2345e+21"),
            (-3.0e300, "-3e+300"),
            (5e-324, "5e-324"),
            (f64::MAX, "1.7976931348623157e+308"),
            (1.0 / 3.0, "0.3333333333333333"),
            (f64::NAN, "NaN"),
            (f64::NEG_INFINITY, "-Infinity"),
        ];
        for (x, want) in cases {
            assert_eq!(py_float_repr(x), want, "repr({x:?})");
        }
    }

    #[test]
    fn dumps_uses_python_separators_order_and_escapes() {
        // Python: json.dumps({"b": 1, "a": [True, None, 2.0, "é\"\\\n\t\x01<&>"]}, ensure_ascii=False)
        let got = render(
            "{{ x | tojson }}",
            r#"{"b": 1, "a": [true, null, 2.0, "é\"\\\n\t\u0001<&>"]}"#,
        );
        assert_eq!(
            got,
            r#"{"b": 1, "a": [true, null, 2.0, "é\"\\\n\t\u0001<&>"]}"#
        );
    }

    #[test]
    fn dumps_with_indent_matches_python() {
        // Python: json.dumps({"a": [1, {}], "b": {"c": []}}, indent=2)
        let got = render(
            "{{ x | tojson(indent=2) }}",
            r#"{"a": [1, {}], "b": {"c": []}}"#,
        );
        assert_eq!(
            got,
            "{\n  \"a\": [\n    1,\n    {}\n  ],\n  \"b\": {\n    \"c\": []\n  }\n}"
        );
    }

    #[test]
    fn ensure_ascii_escapes_astral_chars_as_surrogate_pairs() {
        // Python: json.dumps("é👋", ensure_ascii=True) == '"\\u00e9\\ud83d\\udc4b"'
        let got = render("{{ x | tojson(ensure_ascii=true) }}", r#""é👋""#);
        assert_eq!(got, r#""\u00e9\ud83d\udc4b""#);
    }

    #[test]
    fn unknown_keyword_is_an_error() {
        let mut env = minijinja::Environment::new();
        env.add_filter("tojson", tojson_filter);
        let err = env
            .render_str("{{ 1 | tojson(sort_keys=true) }}", ())
            .unwrap_err();
        assert!(err.to_string().contains("sort_keys"), "{err}");
    }
}
