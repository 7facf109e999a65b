//! A parser for the Prometheus text exposition format (what Envoy's /stats/prometheus serves).

use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Parses every sample line; `# TYPE`/`# HELP` lines and blanks are skipped. Malformed lines are
/// an error, so a broken exposition fails the test that reads it.
pub fn parse(text: &str) -> Result<Vec<Sample>, String> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        out.push(parse_line(line).map_err(|e| format!("line {}: {e}: {line}", n + 1))?);
    }
    Ok(out)
}

fn parse_line(line: &str) -> Result<Sample, String> {
    let name_end = line.find(['{', ' ']).ok_or("no value")?;
    let name = &line[..name_end];
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
        return Err(format!("bad metric name {name:?}"));
    }
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(r) = rest.strip_prefix('{') {
        let mut chars = r.char_indices().peekable();
        let mut key = String::new();
        let end;
        loop {
            let Some((i, c)) = chars.next() else {
                return Err("unterminated labels".into());
            };
            match c {
                '}' if key.is_empty() => {
                    end = i + 1;
                    break;
                }
                ',' | ' ' if key.is_empty() => {}
                '=' => {
                    if chars.next().map(|x| x.1) != Some('"') {
                        return Err("label value not quoted".into());
                    }
                    let mut value = String::new();
                    loop {
                        match chars.next() {
                            Some((_, '\\')) => match chars.next() {
                                Some((_, 'n')) => value.push('\n'),
                                Some((_, c)) => value.push(c),
                                None => return Err("bad escape".into()),
                            },
                            Some((_, '"')) => break,
                            Some((_, c)) => value.push(c),
                            None => return Err("unterminated label value".into()),
                        }
                    }
                    labels.insert(std::mem::take(&mut key), value);
                }
                c if c.is_ascii_alphanumeric() || c == '_' => key.push(c),
                c => return Err(format!("unexpected {c:?} in labels")),
            }
        }
        rest = &r[end..];
    }
    let mut parts = rest.split_whitespace();
    let v = parts.next().ok_or("no value")?;
    let value = match v {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v.parse::<f64>().map_err(|e| format!("bad value {v:?}: {e}"))?,
    };
    Ok(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

/// Sum of `name` samples whose labels include all of `want`.
pub fn sum(samples: &[Sample], name: &str, want: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| {
            s.name == name
                && want
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_envoy_style_lines() {
        let text = "# TYPE model_router_tokens_total counter\n\
            model_router_tokens_total{model=\"llama\",destination=\"v1\",type=\"input\"} 42\n\
            envoy_x_bucket{le=\"+Inf\"} 3\n\
            plain 1.5e3\n\
            esc{a=\"q\\\"x\\\\y\"} 0\n";
        let s = parse(text).unwrap();
        assert_eq!(s.len(), 4);
        assert_eq!(
            sum(
                &s,
                "model_router_tokens_total",
                &[("model", "llama"), ("type", "input")]
            ),
            42.0
        );
        assert_eq!(s[2].value, 1500.0);
        assert_eq!(s[3].labels["a"], "q\"x\\y");
        assert!(parse("bad{x=1} 2").is_err());
        assert!(parse("name{a=\"b\"} notanumber").is_err());
    }
}
