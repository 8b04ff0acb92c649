//! MQTT topic patterns with named captures (`sensors/{device}/temp` subscribes
//! to `sensors/+/temp` and captures `device`), and the output topic templates
//! (`results/{join}/{key}`).

use crate::prelude::*;

/// Most named captures one pattern may have.
pub const MAX_CAPTURES: usize = 8;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Seg {
    Literal(String),
    /// A named single-level wildcard; the index into [`TopicPattern::names`].
    Capture(usize),
    /// An anonymous single-level wildcard `+`.
    Plus,
    /// A trailing multi-level wildcard `#`.
    Hash,
}

/// A topic filter whose single-level wildcards may carry names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicPattern {
    text: String,
    filter: String,
    segs: Vec<Seg>,
    names: Vec<String>,
    /// `/` and the last level, when that is a literal after another level:
    /// how every matching topic ends. Most topics a stream's pattern sees
    /// belong to another stream, and most differ from it in the last level
    /// (`plant/{line}/temp`, `plant/{line}/power`): rejected at a glance.
    tail: String,
}

/// Byte ranges of a match's captures in the topic, by capture index.
#[derive(Clone, Copy, Debug, Default)]
pub struct Captures {
    ranges: [(u16, u16); MAX_CAPTURES],
}

impl Captures {
    /// The captured text of capture `i` in `topic`.
    pub fn get<'t>(&self, topic: &'t str, i: usize) -> &'t str {
        let (a, b) = self.ranges[i];
        &topic[a as usize..b as usize]
    }
}

impl TopicPattern {
    /// Parses a pattern such as `sensors/{device}/temp`, `plant/+/{line}/#`.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.is_empty() {
            return Err("a topic pattern may not be empty".into());
        }
        let parts: Vec<&str> = text.split('/').collect();
        let mut segs = Vec::with_capacity(parts.len());
        let mut names: Vec<String> = Vec::new();
        let mut filter = Vec::with_capacity(parts.len());
        for (i, p) in parts.iter().enumerate() {
            if let Some(inner) = p.strip_prefix('{').and_then(|r| r.strip_suffix('}')) {
                if inner.is_empty()
                    || !inner.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
                {
                    return Err(format!(
                        "topic `{text}`: capture `{p}` needs a name of letters, digits, `_` or `-`"
                    ));
                }
                if names.iter().any(|n| n == inner) {
                    return Err(format!("topic `{text}`: capture `{{{inner}}}` appears twice"));
                }
                if names.len() == MAX_CAPTURES {
                    return Err(format!("topic `{text}`: more than {MAX_CAPTURES} captures"));
                }
                names.push(inner.to_string());
                segs.push(Seg::Capture(names.len() - 1));
                filter.push("+");
            } else if *p == "+" {
                segs.push(Seg::Plus);
                filter.push("+");
            } else if *p == "#" {
                if i + 1 != parts.len() {
                    return Err(format!("topic `{text}`: `#` may only be the last level"));
                }
                segs.push(Seg::Hash);
                filter.push("#");
            } else if p.contains(['+', '#', '{', '}']) {
                return Err(format!(
                    "topic `{text}`: level `{p}` mixes wildcards or braces with text; a wildcard must be a whole level"
                ));
            } else {
                segs.push(Seg::Literal(p.to_string()));
                filter.push(p);
            }
        }
        if text.len() > u16::MAX as usize {
            return Err("topic pattern too long".into());
        }
        let tail = match segs.last() {
            Some(Seg::Literal(l)) if segs.len() > 1 => format!("/{l}"),
            _ => String::new(),
        };
        Ok(TopicPattern { text: text.to_string(), filter: filter.join("/"), segs, names, tail })
    }

    /// The pattern as written.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The MQTT subscription filter (`sensors/+/temp`).
    pub fn filter(&self) -> &str {
        &self.filter
    }

    /// The capture names, in order.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    pub fn capture_index(&self, name: &str) -> Option<usize> {
        self.names.iter().position(|n| n == name)
    }

    /// Whether this filter matches some topic under `prefix/` (so it would
    /// receive messages published there).
    pub fn matches_prefix_of(&self, prefix: &str) -> bool {
        let mut levels = prefix.split('/');
        for seg in &self.segs {
            let Some(level) = levels.next() else { return true };
            match seg {
                Seg::Hash => return true,
                Seg::Literal(l) if l != level => return false,
                _ => {}
            }
        }
        false
    }

    /// The pattern as a Java/Python regular expression matching the same topics as
    /// [`matches`](Self::matches), with one group per named capture: element `i` of the
    /// second value is the group number of capture `i` (for `edgejoin export spark`).
    pub fn regex(&self) -> (String, Vec<usize>) {
        let mut re = String::from("^");
        let mut groups = vec![0; self.names.len()];
        let mut group = 0;
        for (n, seg) in self.segs.iter().enumerate() {
            let first = n == 0;
            match seg {
                Seg::Hash => {
                    // `a/#` matches `a` too; a leading wildcard never matches a `$` topic
                    if first {
                        re.push_str("(?!\\$).*");
                    } else {
                        re.push_str("(?:/.*)?");
                    }
                    break;
                }
                _ if !first => re.push('/'),
                _ => {}
            }
            match seg {
                Seg::Literal(l) => {
                    for c in l.chars() {
                        if "\\.[]{}()<>*+-=!?^$|&,:#%'\"~`@;".contains(c) {
                            re.push('\\');
                        }
                        re.push(c);
                    }
                }
                Seg::Capture(i) => {
                    group += 1;
                    groups[*i] = group;
                    re.push_str(if first { "((?!\\$)[^/]*)" } else { "([^/]*)" });
                }
                Seg::Plus => re.push_str(if first { "(?!\\$)[^/]*" } else { "[^/]*" }),
                Seg::Hash => unreachable!("handled above"),
            }
        }
        re.push('$');
        (re, groups)
    }

    /// Matches a concrete topic; returns the captures' byte ranges. Runs on
    /// every message for every stream's patterns, so it walks the bytes once:
    /// a literal level is compared in place, a wildcard level scanned to its `/`.
    pub fn matches(&self, topic: &str) -> Option<Captures> {
        let (b, tail) = (topic.as_bytes(), self.tail.as_bytes());
        // the last byte first: a comparison of a few bytes is mostly a call's cost
        if topic.len() > u16::MAX as usize
            || tail.last().is_some_and(|c| b.last() != Some(c))
            || !b.ends_with(tail)
        {
            return None;
        }
        let mut caps = Captures::default();
        // `pos`: where the next level starts; `rest`: whether one does (an
        // empty topic, or one ending in `/`, has an empty level there)
        let (mut pos, mut rest) = (0usize, true);
        for seg in &self.segs {
            if let Seg::Hash = seg {
                // MQTT: `a/#` also matches `a` itself; `$`-topics are never matched by wildcards.
                return (pos > 0 || b.first() != Some(&b'$')).then_some(caps);
            }
            if !rest {
                return None;
            }
            let start = pos;
            let end = match seg {
                Seg::Literal(l) => {
                    let end = start + l.len();
                    if !b[start..].starts_with(l.as_bytes()) || b.get(end).is_some_and(|&c| c != b'/') {
                        return None;
                    }
                    end
                }
                _ => {
                    if start == 0 && b.first() == Some(&b'$') {
                        return None;
                    }
                    b[start..].iter().position(|&c| c == b'/').map_or(b.len(), |i| start + i)
                }
            };
            if let Seg::Capture(i) = seg {
                caps.ranges[*i] = (start as u16, end as u16);
            }
            rest = end < b.len();
            pos = end + 1;
        }
        (!rest).then_some(caps)
    }
}

/// A variable of an output topic template.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Var {
    Join,
    Window,
    Stream,
    Key,
    Gateway,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Part {
    Text(String),
    Var(Var),
}

/// An output topic template such as `results/{join}/{key}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicTemplate {
    text: String,
    parts: Vec<Part>,
}

/// Values for a template's variables.
#[derive(Clone, Copy, Debug, Default)]
pub struct TemplateVars<'a> {
    pub name: &'a str,
    pub key: &'a str,
    pub gateway: &'a str,
}

impl TopicTemplate {
    /// Parses a template; `allowed` lists the variables this template may use.
    pub fn parse(text: &str, allowed: &[Var]) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_string()));
            }
            let close = rest[open..]
                .find('}')
                .ok_or_else(|| format!("topic template `{text}`: `{{` without `}}`"))?;
            let name = &rest[open + 1..open + close];
            let var = match name {
                "join" => Var::Join,
                "window" => Var::Window,
                "stream" => Var::Stream,
                "key" => Var::Key,
                "gateway" => Var::Gateway,
                other => return Err(format!("topic template `{text}`: unknown variable `{{{other}}}`")),
            };
            if !allowed.contains(&var) {
                return Err(format!("topic template `{text}`: `{{{name}}}` cannot be used here"));
            }
            parts.push(Part::Var(var));
            rest = &rest[open + close + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_string()));
        }
        if text.contains(['+', '#']) || text.is_empty() {
            return Err(format!(
                "topic template `{text}`: a publish topic may not be empty or contain `+` or `#`"
            ));
        }
        Ok(TopicTemplate { text: text.to_string(), parts })
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    /// Renders the topic into `out` (cleared first). Wildcard characters and
    /// NUL in substituted values become `_` so the result is always publishable.
    pub fn render(&self, vars: &TemplateVars<'_>, out: &mut String) {
        out.clear();
        self.render_append(vars, out);
    }

    /// Renders the topic at the end of `out`.
    pub fn render_append(&self, vars: &TemplateVars<'_>, out: &mut String) {
        for p in &self.parts {
            match p {
                Part::Text(t) => out.push_str(t),
                Part::Var(v) => {
                    let val = match v {
                        Var::Join | Var::Window | Var::Stream => vars.name,
                        Var::Key => vars.key,
                        Var::Gateway => vars.gateway,
                    };
                    out.extend(val.chars().map(|c| match c {
                        '+' | '#' | '\0' => '_',
                        c => c,
                    }));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pattern_as_a_regular_expression() {
        let re = |t: &str| TopicPattern::parse(t).unwrap().regex();
        assert_eq!(re("x/{k}/a"), ("^x/([^/]*)/a$".into(), vec![1]));
        // captures numbered by name, groups by position
        assert_eq!(re("{site}/+/{dev}/t.v"), ("^((?!\\$)[^/]*)/[^/]*/([^/]*)/t\\.v$".into(), vec![1, 2]));
        assert_eq!(re("a/#"), ("^a(?:/.*)?$".into(), vec![]));
        assert_eq!(re("#"), ("^(?!\\$).*$".into(), vec![]));
        assert_eq!(re("+/x"), ("^(?!\\$)[^/]*/x$".into(), vec![]));
    }

    #[test]
    fn pattern_captures() {
        let p = TopicPattern::parse("sensors/{device}/temp").unwrap();
        assert_eq!(p.filter(), "sensors/+/temp");
        let t = "sensors/dev-1/temp";
        let c = p.matches(t).unwrap();
        assert_eq!(c.get(t, 0), "dev-1");
        assert!(p.matches("sensors/dev-1/hum").is_none());
        assert!(p.matches("sensors/dev-1/temp/x").is_none());
        assert!(p.matches("sensors/temp").is_none());
    }

    #[test]
    fn pattern_hash_and_plus() {
        let p = TopicPattern::parse("plant/+/{line}/#").unwrap();
        assert_eq!(p.filter(), "plant/+/+/#");
        let t = "plant/a/l7/x/y";
        assert_eq!(p.matches(t).unwrap().get(t, 0), "l7");
        assert!(p.matches("plant/a/l7").is_some());
        assert!(TopicPattern::parse("a/#/b").is_err());
        assert!(TopicPattern::parse("a/x{y}").is_err());
        assert!(TopicPattern::parse("a/{x}/{x}").is_err());
        assert!(TopicPattern::parse("#").unwrap().matches("$SYS/x").is_none());
    }

    /// The simple model: split the topic into levels and compare them one by one.
    fn model(p: &TopicPattern, topic: &str) -> Option<Vec<(u16, u16)>> {
        let mut caps = vec![(0u16, 0u16); p.names.len()];
        let mut levels = topic.split('/');
        let mut pos = 0usize;
        for seg in &p.segs {
            if let Seg::Hash = seg {
                return (!topic.starts_with('$') || pos > 0).then_some(caps);
            }
            let level = levels.next()?;
            let start = pos;
            pos += level.len() + 1;
            match seg {
                Seg::Literal(l) if l != level => return None,
                Seg::Capture(_) | Seg::Plus if start == 0 && level.starts_with('$') => return None,
                Seg::Capture(i) => caps[*i] = (start as u16, (start + level.len()) as u16),
                _ => {}
            }
        }
        levels.next().is_none().then_some(caps)
    }

    proptest::proptest! {
        #[test]
        fn matching_agrees_with_splitting_into_levels(
            pat in proptest::collection::vec(0u8..6, 1..5),
            hash in proptest::bool::ANY,
            topic in "[ab$/]{0,9}",
        ) {
            let mut text: Vec<String> = pat
                .iter()
                .enumerate()
                .map(|(i, k)| match k {
                    0 => "a".into(),
                    1 => "ab".into(),
                    2 => "$a".into(),
                    3 => "+".into(),
                    4 => "".into(),
                    _ => format!("{{c{i}}}"),
                })
                .collect();
            if hash {
                text.push("#".into());
            }
            let Ok(p) = TopicPattern::parse(&text.join("/")) else { return Ok(()) };
            let got = p.matches(&topic).map(|c| c.ranges[..p.names.len()].to_vec());
            proptest::prop_assert_eq!(got, model(&p, &topic), "pattern {} topic {:?}", p.text(), topic);
        }
    }

    #[test]
    fn template_renders() {
        let t = TopicTemplate::parse("results/{join}/{key}", &[Var::Join, Var::Key]).unwrap();
        let mut s = String::new();
        t.render(&TemplateVars { name: "op", key: "a+b", gateway: "" }, &mut s);
        assert_eq!(s, "results/op/a_b");
        assert!(TopicTemplate::parse("x/{window}", &[Var::Join]).is_err());
        assert!(TopicTemplate::parse("x/{nope}", &[Var::Join]).is_err());
        assert!(TopicTemplate::parse("x/#", &[Var::Join]).is_err());
    }
}
