//! Sprig's integer and float math and the number conversions
//! (masterminds.github.io/sprig/math.html, mathf.html, integer_slice.html,
//! conversion.html).

use gtmpl_ng::{Func, Value};
use rand::Rng;

use super::{
    Res, arg, fail, float, int, int_arg, parse_go_int, string_arg, to_float64, to_int64, want,
    want_at_least,
};

pub(super) const FUNCS: &[(&str, Func)] = &[
    ("add1", add1),
    ("add", add),
    ("sub", sub),
    ("div", div),
    ("mod", modulo),
    ("mul", mul),
    ("randInt", rand_int),
    ("biggest", max),
    ("max", max),
    ("min", min),
    ("maxf", maxf),
    ("minf", minf),
    ("add1f", add1f),
    ("addf", addf),
    ("subf", subf),
    ("divf", divf),
    ("mulf", mulf),
    ("ceil", ceil),
    ("floor", floor),
    ("round", round),
    ("atoi", atoi),
    ("int", to_int),
    ("int64", to_int),
    ("float64", to_float),
    ("toDecimal", to_decimal),
    ("seq", seq),
    ("until", until),
    ("untilStep", until_step),
];

fn add1(args: &[Value]) -> Res {
    want("add1", args, 1)?;
    Ok(int(to_int64(arg(args, 0)).wrapping_add(1)))
}

fn add(args: &[Value]) -> Res {
    Ok(int(args
        .iter()
        .fold(0i64, |a, b| a.wrapping_add(to_int64(b)))))
}

fn sub(args: &[Value]) -> Res {
    want("sub", args, 2)?;
    Ok(int(
        to_int64(arg(args, 0)).wrapping_sub(to_int64(arg(args, 1)))
    ))
}

fn div(args: &[Value]) -> Res {
    want("div", args, 2)?;
    let b = to_int64(arg(args, 1));
    if b == 0 {
        return Err(fail(
            "error calling div: runtime error: integer divide by zero",
        ));
    }
    Ok(int(to_int64(arg(args, 0)).wrapping_div(b)))
}

fn modulo(args: &[Value]) -> Res {
    want("mod", args, 2)?;
    let b = to_int64(arg(args, 1));
    if b == 0 {
        return Err(fail(
            "error calling mod: runtime error: integer divide by zero",
        ));
    }
    Ok(int(to_int64(arg(args, 0)).wrapping_rem(b)))
}

fn mul(args: &[Value]) -> Res {
    want_at_least("mul", args, 1)?;
    Ok(int(args[1..]
        .iter()
        .fold(to_int64(arg(args, 0)), |a, b| {
            a.wrapping_mul(to_int64(b))
        })))
}

fn rand_int(args: &[Value]) -> Res {
    want("randInt", args, 2)?;
    let lo = int_arg("randInt", args, 0)?;
    let hi = int_arg("randInt", args, 1)?;
    if hi <= lo {
        return Err(fail("error calling randInt: invalid argument to Intn"));
    }
    Ok(int(rand::rng().random_range(lo..hi)))
}

fn max(args: &[Value]) -> Res {
    want_at_least("max", args, 1)?;
    Ok(int(args.iter().map(to_int64).max().unwrap_or_default()))
}

fn min(args: &[Value]) -> Res {
    want_at_least("min", args, 1)?;
    Ok(int(args.iter().map(to_int64).min().unwrap_or_default()))
}

/// Go's `math.Max`: NaN wins.
fn maxf(args: &[Value]) -> Res {
    want_at_least("maxf", args, 1)?;
    let mut a = to_float64(&args[0]);
    for b in &args[1..] {
        let b = to_float64(b);
        a = if a.is_nan() || b.is_nan() {
            f64::NAN
        } else {
            a.max(b)
        };
    }
    Ok(float(a))
}

fn minf(args: &[Value]) -> Res {
    want_at_least("minf", args, 1)?;
    let mut a = to_float64(&args[0]);
    for b in &args[1..] {
        let b = to_float64(b);
        a = if a.is_nan() || b.is_nan() {
            f64::NAN
        } else {
            a.min(b)
        };
    }
    Ok(float(a))
}

/// A decimal as shopspring/decimal holds it: `mantissa × 10^-scale`.
#[derive(Clone, Copy, Debug)]
struct Decimal {
    mantissa: i128,
    scale: u32,
}

impl Decimal {
    /// `decimal.NewFromFloat`: the shortest decimal that reads back as `f`.
    fn from_f64(f: f64) -> Option<Self> {
        if !f.is_finite() {
            return None;
        }
        let text = format!("{f}");
        let (neg, digits) = match text.strip_prefix('-') {
            Some(d) => (true, d),
            None => (false, text.as_str()),
        };
        let (int_part, frac) = digits.split_once('.').unwrap_or((digits, ""));
        let mantissa: i128 = format!("{int_part}{frac}").parse().ok()?;
        Some(Self {
            mantissa: if neg { -mantissa } else { mantissa },
            scale: u32::try_from(frac.len()).ok()?,
        })
    }

    fn rescale(self, scale: u32) -> Option<Self> {
        let factor = 10i128.checked_pow(scale.checked_sub(self.scale)?)?;
        Some(Self {
            mantissa: self.mantissa.checked_mul(factor)?,
            scale,
        })
    }

    fn align(a: Self, b: Self) -> Option<(Self, Self)> {
        let scale = a.scale.max(b.scale);
        Some((a.rescale(scale)?, b.rescale(scale)?))
    }

    fn add(self, o: Self) -> Option<Self> {
        let (a, b) = Self::align(self, o)?;
        Some(Self {
            mantissa: a.mantissa.checked_add(b.mantissa)?,
            scale: a.scale,
        })
    }

    fn sub(self, o: Self) -> Option<Self> {
        self.add(Self {
            mantissa: -o.mantissa,
            scale: o.scale,
        })
    }

    fn mul(self, o: Self) -> Option<Self> {
        Some(Self {
            mantissa: self.mantissa.checked_mul(o.mantissa)?,
            scale: self.scale.checked_add(o.scale)?,
        })
    }

    /// shopspring's `Div`: rounded half away from zero to 16 places.
    fn div(self, o: Self) -> Option<Self> {
        const PLACES: u32 = 16;
        if o.mantissa == 0 {
            return None;
        }
        // self/o = (m1 / m2) × 10^(s2 - s1); compute at PLACES + 1 digits.
        let shift = PLACES as i64 + 1 + o.scale as i64 - self.scale as i64;
        let (num, den) = if shift >= 0 {
            (
                self.mantissa
                    .checked_mul(10i128.checked_pow(shift as u32)?)?,
                o.mantissa,
            )
        } else {
            (
                self.mantissa,
                o.mantissa
                    .checked_mul(10i128.checked_pow((-shift) as u32)?)?,
            )
        };
        let q = num / den;
        let rounded = if q % 10 >= 5 {
            q / 10 + 1
        } else if q % 10 <= -5 {
            q / 10 - 1
        } else {
            q / 10
        };
        Some(Self {
            mantissa: rounded,
            scale: PLACES,
        })
    }

    fn to_f64(self) -> f64 {
        let digits = self.mantissa.unsigned_abs().to_string();
        let scale = self.scale as usize;
        let text = if digits.len() > scale {
            format!(
                "{}.{}",
                &digits[..digits.len() - scale],
                &digits[digits.len() - scale..]
            )
        } else {
            format!("0.{}{digits}", "0".repeat(scale - digits.len()))
        };
        let v: f64 = text.parse().unwrap_or(0.0);
        if self.mantissa < 0 { -v } else { v }
    }
}

/// Sprig's `execDecimalOp`: exact decimal arithmetic on the operands'
/// shortest decimal forms, the result read back as a float64.
fn decimal_op(
    name: &str,
    first: f64,
    rest: &[Value],
    op: fn(Decimal, Decimal) -> Option<Decimal>,
    fallback: fn(f64, f64) -> f64,
) -> Res {
    let mut exact = Decimal::from_f64(first);
    let mut approx = first;
    for v in rest {
        let x = to_float64(v);
        if name == "divf" && x == 0.0 {
            return Err(fail("error calling divf: decimal division by 0"));
        }
        exact = exact.and_then(|d| Decimal::from_f64(x).and_then(|x| op(d, x)));
        approx = fallback(approx, x);
    }
    Ok(float(exact.map_or(approx, Decimal::to_f64)))
}

fn add1f(args: &[Value]) -> Res {
    want("add1f", args, 1)?;
    decimal_op(
        "add1f",
        to_float64(arg(args, 0)),
        &[Value::from(1u64)],
        Decimal::add,
        |a, b| a + b,
    )
}

fn addf(args: &[Value]) -> Res {
    decimal_op("addf", 0.0, args, Decimal::add, |a, b| a + b)
}

fn subf(args: &[Value]) -> Res {
    want_at_least("subf", args, 1)?;
    decimal_op(
        "subf",
        to_float64(&args[0]),
        &args[1..],
        Decimal::sub,
        |a, b| a - b,
    )
}

fn mulf(args: &[Value]) -> Res {
    want_at_least("mulf", args, 1)?;
    decimal_op(
        "mulf",
        to_float64(&args[0]),
        &args[1..],
        Decimal::mul,
        |a, b| a * b,
    )
}

fn divf(args: &[Value]) -> Res {
    want_at_least("divf", args, 1)?;
    decimal_op(
        "divf",
        to_float64(&args[0]),
        &args[1..],
        Decimal::div,
        |a, b| a / b,
    )
}

fn ceil(args: &[Value]) -> Res {
    want("ceil", args, 1)?;
    Ok(float(to_float64(arg(args, 0)).ceil()))
}

fn floor(args: &[Value]) -> Res {
    want("floor", args, 1)?;
    Ok(float(to_float64(arg(args, 0)).floor()))
}

fn round(args: &[Value]) -> Res {
    want_at_least("round", args, 2)?;
    let value = to_float64(arg(args, 0));
    let places = int_arg("round", args, 1)? as f64;
    let on = match args.get(2) {
        Some(Value::Number(n)) => to_float64(&Value::Number(*n)),
        Some(other) => {
            return Err(fail(format!(
                "wrong type for value; expected float64; got {}",
                super::go_type(other)
            )));
        }
        None => 0.5,
    };
    let pow = 10f64.powf(places);
    let digit = pow * value;
    let frac = digit.fract();
    let r = if frac >= on {
        digit.ceil()
    } else {
        digit.floor()
    };
    Ok(float(r / pow))
}

fn atoi(args: &[Value]) -> Res {
    want("atoi", args, 1)?;
    let text = string_arg("atoi", args, 0)?;
    let digits = text.strip_prefix(['+', '-']).unwrap_or(&text);
    let ok = !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit());
    Ok(int(if ok { text.parse().unwrap_or(0) } else { 0 }))
}

fn to_int(args: &[Value]) -> Res {
    want("int", args, 1)?;
    Ok(int(to_int64(arg(args, 0))))
}

fn to_float(args: &[Value]) -> Res {
    want("float64", args, 1)?;
    Ok(float(to_float64(arg(args, 0))))
}

/// `toDecimal`: the value's text read as an octal number (0 if it is not one).
fn to_decimal(args: &[Value]) -> Res {
    want("toDecimal", args, 1)?;
    let text = super::strval(arg(args, 0));
    let digits = text.strip_prefix(['+', '-']).unwrap_or(&text);
    let ok = !digits.is_empty() && digits.bytes().all(|b| (b'0'..=b'7').contains(&b));
    let v = if ok {
        i64::from_str_radix(&text, 8).unwrap_or(0)
    } else {
        0
    };
    let _ = parse_go_int;
    Ok(int(v))
}

const MAX_ELEMENTS: i64 = 1 << 20;

fn until_step_list(start: i64, stop: i64, step: i64) -> Result<Vec<i64>, gtmpl_ng::FuncError> {
    let mut out = Vec::new();
    let mut push = |i: i64| {
        if out.len() as i64 >= MAX_ELEMENTS {
            return Err(fail(format!(
                "more than the {MAX_ELEMENTS} elements allowed"
            )));
        }
        out.push(i);
        Ok(())
    };
    if stop < start {
        if step >= 0 {
            return Ok(out);
        }
        let mut i = start;
        while i > stop {
            push(i)?;
            i += step;
        }
        return Ok(out);
    }
    if step <= 0 {
        return Ok(out);
    }
    let mut i = start;
    while i < stop {
        push(i)?;
        i += step;
    }
    Ok(out)
}

fn ints(list: Vec<i64>) -> Value {
    Value::Array(list.into_iter().map(int).collect())
}

fn until(args: &[Value]) -> Res {
    want("until", args, 1)?;
    let count = int_arg("until", args, 0)?;
    let step = if count < 0 { -1 } else { 1 };
    Ok(ints(until_step_list(0, count, step)?))
}

fn until_step(args: &[Value]) -> Res {
    want("untilStep", args, 3)?;
    let start = int_arg("untilStep", args, 0)?;
    let stop = int_arg("untilStep", args, 1)?;
    let step = int_arg("untilStep", args, 2)?;
    Ok(ints(until_step_list(start, stop, step)?))
}

/// Like GNU `seq`: `seq END`, `seq START END`, `seq START STEP END`.
fn seq(args: &[Value]) -> Res {
    let p: Vec<i64> = (0..args.len())
        .map(|i| int_arg("seq", args, i))
        .collect::<Result<_, _>>()?;
    let list = match p.as_slice() {
        [end] => {
            let inc = if *end < 1 { -1 } else { 1 };
            until_step_list(1, end + inc, inc)?
        }
        [start, end] => {
            let step = if end < start { -1 } else { 1 };
            until_step_list(*start, end + step, step)?
        }
        [start, step, end] => {
            let inc = if end < start {
                if *step > 0 {
                    return Ok(Value::from(""));
                }
                -1
            } else {
                1
            };
            until_step_list(*start, end + inc, *step)?
        }
        _ => return Ok(Value::from("")),
    };
    Ok(Value::String(
        list.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(" "),
    ))
}

#[cfg(test)]
mod tests {
    use super::super::testing::table;
    use serde_json::json;

    /// Expectations from Sprig's "Integer Math Functions", "Float Math
    /// Functions", "Integer Slice Functions" and "Type Conversion Functions"
    /// pages (masterminds.github.io/sprig/math.html, mathf.html,
    /// integer_slice.html, conversion.html), checked against Go.
    #[test]
    fn integer_math() {
        let n = json!({"n": 3, "s": "12"});
        table(&[
            ("{{ add 1 2 3 }}", n.clone(), Ok("6")),
            ("{{ add .n .s }}", n.clone(), Ok("15")),
            ("{{ add1 5 }}", n.clone(), Ok("6")),
            ("{{ sub 5 7 }}", n.clone(), Ok("-2")),
            ("{{ div 7 2 }}", n.clone(), Ok("3")),
            ("{{ div -7 2 }}", n.clone(), Ok("-3")),
            ("{{ mod 7 3 }}", n.clone(), Ok("1")),
            ("{{ mul 2 3 4 }}", n.clone(), Ok("24")),
            ("{{ max 1 5 3 }}", n.clone(), Ok("5")),
            ("{{ biggest 1 5 3 }}", n.clone(), Ok("5")),
            ("{{ min 4 2 8 }}", n.clone(), Ok("2")),
            ("{{ div 1 0 }}", n.clone(), Err("integer divide by zero")),
            (
                "{{ $r := randInt 5 7 }}{{ and (ge $r 5) (lt $r 7) }}",
                n.clone(),
                Ok("true"),
            ),
            ("{{ add \"0x10\" 1 }}", n.clone(), Ok("17")),
        ]);
    }

    #[test]
    fn float_math() {
        let n = json!({"f": 1.5});
        table(&[
            ("{{ addf 1.5 2 2 }}", n.clone(), Ok("5.5")),
            ("{{ addf 1.1 2.2 }}", n.clone(), Ok("3.3")),
            ("{{ add1f 1.5 }}", n.clone(), Ok("2.5")),
            ("{{ subf 1.5 2 2 }}", n.clone(), Ok("-2.5")),
            ("{{ divf 10 4 }}", n.clone(), Ok("2.5")),
            ("{{ divf 1 3 }}", n.clone(), Ok("0.3333333333333333")),
            ("{{ mulf 1.5 2 2 }}", n.clone(), Ok("6")),
            ("{{ maxf 1 2.5 3 }}", n.clone(), Ok("3")),
            ("{{ minf 1.5 2 3 }}", n.clone(), Ok("1.5")),
            ("{{ floor 123.9999 }}", n.clone(), Ok("123")),
            ("{{ ceil 123.001 }}", n.clone(), Ok("124")),
            ("{{ round 123.555555 3 }}", n.clone(), Ok("123.556")),
            ("{{ round 123.5555 3 0.7 }}", n.clone(), Ok("123.555")),
            ("{{ addf .f 1 }}", n.clone(), Ok("2.5")),
        ]);
    }

    #[test]
    fn integer_slices_and_conversions() {
        let n = json!({});
        table(&[
            ("{{ until 5 }}", n.clone(), Ok("[0 1 2 3 4]")),
            ("{{ until -3 }}", n.clone(), Ok("[0 -1 -2]")),
            ("{{ untilStep 3 6 2 }}", n.clone(), Ok("[3 5]")),
            ("{{ untilStep 6 3 1 }}", n.clone(), Ok("[]")),
            ("{{ seq 5 }}", n.clone(), Ok("1 2 3 4 5")),
            ("{{ seq -3 }}", n.clone(), Ok("1 0 -1 -2 -3")),
            ("{{ seq 0 2 }}", n.clone(), Ok("0 1 2")),
            ("{{ seq 2 -2 }}", n.clone(), Ok("2 1 0 -1 -2")),
            ("{{ seq 0 2 10 }}", n.clone(), Ok("0 2 4 6 8 10")),
            ("{{ seq 0 -2 -5 }}", n.clone(), Ok("0 -2 -4")),
            ("{{ atoi \"42\" }}", n.clone(), Ok("42")),
            ("{{ atoi \"4x\" }}", n.clone(), Ok("0")),
            ("{{ int \"7\" }}", n.clone(), Ok("7")),
            ("{{ int 7.9 }}", n.clone(), Ok("7")),
            ("{{ int64 \"0x1F\" }}", n.clone(), Ok("31")),
            ("{{ float64 \"1.5\" }}", n.clone(), Ok("1.5")),
            ("{{ toDecimal \"0777\" }}", n.clone(), Ok("511")),
            ("{{ toDecimal \"89\" }}", n.clone(), Ok("0")),
        ]);
    }
}
