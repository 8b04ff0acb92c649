//! Reading a config file: TOML with the contract's names (docs/CONFIG.md), parsed
//! once and checked into a [`Config`]: the engine's [`Plan`] (what it
//! computes) and the [`Deployment`] (how the service runs). Every refusal
//! names the file, the line and a reason a user can act on.
//!
//! [`raw`] holds the shapes as written; [`streams`], [`windows`], [`joins`]
//! and [`deployment`] check and build their sections; [`units`] reads
//! durations and sizes.

mod check;
mod deployment;
mod gateway;
pub mod homeassistant;
mod joins;
mod raw;
mod streams;
pub mod units;
mod windows;

use std::collections::HashMap;
use std::path::Path;

use edgejoin_engine::plan::{Input, Plan};
use edgejoin_engine::topic::{TopicTemplate, Var};

use check::{Checker, S};
pub use check::{ConfigError, Location, MAX_CAPACITY, MAX_KEYS, MAX_STATE_BYTES};
pub use deployment::*;
use raw::RawConfig;

/// A checked config: what the engine computes and how the gateway runs it.
#[derive(Clone, Debug)]
pub struct Config {
    pub plan: Plan,
    pub deployment: Deployment,
}

/// Reads and checks a config file.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
    parse(path, &text)
}

/// Parses and checks config text; `path` is used in messages.
pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
    let ck = Checker { path, text };
    let raw: RawConfig = toml::from_str(text).map_err(|e| {
        let span = e.span().unwrap_or(0..0);
        let message = e.message().trim();
        if message.starts_with("unknown field") {
            ck.err(span, check::suggest_field(message))
        } else if text.parse::<toml::Table>().is_err() {
            // a syntax error, not a wrong value: where the mistake is
            let at = check::syntax_error_offset(text, span.start);
            ck.err(at..at, message.to_string())
        } else {
            ck.err(span, message.to_string())
        }
    })?;
    build(&ck, raw)
}

fn build(ck: &Checker<'_>, raw: RawConfig) -> Result<Config, ConfigError> {
    // one namespace for streams, windows and joins: windows and joins refer to them by name
    let mut names: HashMap<String, &'static str> = HashMap::new();
    let mut claim = |n: &S<String>, what: &'static str| -> Result<(), ConfigError> {
        let name = n.get_ref();
        if name.is_empty() || name.contains(['/', '+', '#', '{', '}']) || name.trim() != name {
            return Err(ck.err(
                n.span(),
                format!("{what} name `{name}`: use a non-empty name without spaces at its ends, `/`, `+`, `#` or braces"),
            ));
        }
        if let Some(prev) = names.insert(name.clone(), what) {
            return Err(ck.err(
                n.span(),
                format!("duplicate name `{name}`: a {prev} already has it; streams, windows and joins need distinct names"),
            ));
        }
        Ok(())
    };
    for s in &raw.stream {
        claim(&s.get_ref().name, "stream")?;
    }
    for w in &raw.window {
        claim(&w.get_ref().name, "window")?;
    }
    for j in &raw.join {
        claim(&j.get_ref().name, "join")?;
    }

    let mut files = Vec::new();
    let (gateway, service, max_devices) = gateway::build_gateway(ck, raw.gateway.as_ref(), &mut files)?;
    let (source, max_payload) = gateway::build_source(ck, raw.source.as_ref(), &gateway, &mut files)?;
    let upstream = gateway::build_upstream(ck, raw.upstream.as_ref(), &gateway, &source, &mut files)?;

    let mut streams = Vec::with_capacity(raw.stream.len());
    let mut i2c = Vec::new();
    for (i, s) in raw.stream.iter().enumerate() {
        let (def, sensor) = streams::build_stream(ck, s.get_ref(), i)?;
        streams.push(def);
        i2c.extend(sensor);
    }
    let stream_index: HashMap<&str, usize> =
        streams.iter().enumerate().map(|(i, s)| (s.name.as_str(), i)).collect();

    let windows = windows::build_windows(ck, &raw, &streams, &stream_index)?;
    let window_index: HashMap<&str, usize> =
        windows.iter().enumerate().map(|(i, w)| (w.name.as_str(), i)).collect();

    let mut joins = Vec::with_capacity(raw.join.len());
    for j in &raw.join {
        joins.push(joins::build_join(ck, j.get_ref(), &windows, &stream_index, &window_index)?);
    }

    let mut p = Plan { streams, windows, joins, max_devices, max_payload };
    let mut d = Deployment { gateway, service, source, upstream, homeassistant: None, i2c, files };
    // everything is allocated at start: refuse what could not be, before trying
    let bound = edgejoin_engine::Engine::memory_bytes(&p);
    if bound > MAX_STATE_BYTES {
        return Err(ck.err(
            0..0,
            format!(
                "this config implies {} of engine state, more than the {} a gateway allocates at most; lower max_keys, capacity, or the windows' lateness/slide ratio (see check-config)",
                units::format_bytes(bound),
                units::format_bytes(MAX_STATE_BYTES)
            ),
        ));
    }
    // the gateway's own topics must not feed its streams (a loop)
    for st in &p.streams {
        for t in &st.topics {
            if d.source.broker == d.upstream.broker && t.matches_prefix_of(&d.upstream.topic_prefix) {
                return Err(ck.err(
                    0..0,
                    format!(
                        "stream `{}`: topic `{}` would also receive the gateway's own results under `{}` on the same broker",
                        st.name,
                        t.text(),
                        d.upstream.topic_prefix
                    ),
                ));
            }
        }
    }
    // a window nothing reads and without a topic is still shown (else it would be useless)
    let consumed: Vec<bool> = (0..p.windows.len())
        .map(|w| {
            p.windows.iter().any(|x| x.input == Input::Window(w))
                || p.joins.iter().any(|j| j.left == Input::Window(w) || j.right == Input::Window(w))
        })
        .collect();
    for (w, c) in p.windows.iter_mut().zip(consumed) {
        if w.emit.is_none() && !c {
            w.emit = Some(
                TopicTemplate::parse("windows/{window}/{key}", &[Var::Window, Var::Key])
                    .expect("default template is valid"),
            );
        }
    }
    // after the outputs are settled: its units name their values
    d.homeassistant = gateway::build_homeassistant(ck, raw.homeassistant.as_ref(), &p)?;
    Ok(Config { plan: p, deployment: d })
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
[gateway]
id = "t"

[[stream]]
name = "a"
topics = ["s/{dev}/a"]
key = "{dev}"
values = ["v"]
"#;

    fn err(extra: &str) -> (usize, String) {
        let text = format!("{BASE}{extra}");
        match parse(Path::new("gw.toml"), &text) {
            Ok(_) => panic!("accepted:\n{text}"),
            Err(e) => {
                let msg = e.to_string();
                assert!(msg.starts_with("gw.toml:"), "{msg}");
                (e.line(), msg)
            }
        }
    }

    /// The 1-based line of the first occurrence of `needle` in BASE + extra.
    fn line_of(extra: &str, needle: &str) -> usize {
        let text = format!("{BASE}{extra}");
        text[..text.find(needle).expect("needle")].matches('\n').count() + 1
    }

    #[test]
    fn base_is_valid() {
        let p = parse(Path::new("gw.toml"), BASE).unwrap().plan;
        assert_eq!(p.streams[0].values, ["v"]);
        assert_eq!(p.streams[0].capacity.get(), 64);
    }

    #[test]
    fn the_http_endpoint_listens_on_loopback_unless_told_otherwise() {
        let addr = |a: &str| {
            let text = BASE.replace("id = \"t\"", &format!("id = \"t\"\nmetrics_addr = \"{a}\""));
            parse(Path::new("gw.toml"), &text).map(|c| c.deployment.service.metrics_addr.unwrap().to_string())
        };
        assert_eq!(addr("9108").unwrap(), "127.0.0.1:9108");
        assert_eq!(addr(":9108").unwrap(), "127.0.0.1:9108");
        assert_eq!(addr("0.0.0.0:9108").unwrap(), "0.0.0.0:9108");
        assert!(addr("pi:9108").unwrap_err().to_string().contains("write an address and port"));
    }

    /// TLS verification has no off switch: no key a user might try is taken.
    #[test]
    fn no_setting_turns_tls_verification_off() {
        for section in ["source", "upstream"] {
            for key in [
                "insecure = true",
                "tls_insecure = true",
                "verify = false",
                "verify_peer = false",
                "danger_accept_invalid_certs = true",
                "skip_verify = true",
            ] {
                let extra =
                    format!("\n[{section}]\nurl = \"mqtts://localhost:8883\"\nca_file = \"ca.crt\"\n{key}\n");
                let (line, msg) = err(&extra);
                assert_eq!(line, line_of(&extra, key), "{msg}");
                assert!(msg.contains("unknown"), "{section} {key}: {msg}");
            }
        }
        // and what ships listens nowhere beyond the machine
        let shipped = load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/gateway.toml")).unwrap();
        assert!(shipped.deployment.service.metrics_addr.is_none_or(|a| a.ip().is_loopback()));
    }

    #[test]
    fn home_assistant_units_name_values_outputs_carry() {
        let window =
            "\n[[window]]\nname = \"w\"\ninput = \"a\"\nsize = \"1m\"\naggregates = { m = \"mean(v)\" }\n";
        let ok = format!("{window}\n[homeassistant]\ndiscovery = true\nunits = {{ \"w.m\" = \"°C\", count = \"readings\" }}\n");
        let c = parse(Path::new("gw.toml"), &format!("{BASE}{ok}")).unwrap();
        let h = c.deployment.homeassistant.unwrap();
        assert_eq!((h.prefix.as_str(), h.max_sensors, h.units.len()), ("homeassistant", 256, 2));
        let off = format!("{window}\n[homeassistant]\nprefix = \"ha\"\n");
        assert!(parse(Path::new("gw.toml"), &format!("{BASE}{off}"))
            .unwrap()
            .deployment
            .homeassistant
            .is_none());
        let extra =
            format!("{window}\n[homeassistant]\ndiscovery = true\nunits = {{ \"w.mean\" = \"°C\" }}\n");
        let (line, msg) = err(&extra);
        assert_eq!(line, line_of(&extra, "units"));
        assert!(msg.contains("`w.mean` names no value") && msg.contains("w.m, w.count"), "{msg}");
    }

    #[test]
    fn a_password_file_without_a_username_is_refused() {
        let extra = "\n[upstream]\nurl = \"mqtt://127.0.0.1:1884\"\npassword_file = \"pw\"\n";
        let (line, msg) = err(extra);
        assert_eq!(line, line_of(extra, "password_file"));
        assert!(msg.contains("password_file needs `username`"), "{msg}");
        let extra = "\n[source]\npassword_file = \"pw\"\n";
        let (line, _) = err(extra);
        assert_eq!(line, line_of(extra, "password_file"));
    }

    #[test]
    fn unknown_field() {
        let extra = "\n[[window]]\nname = \"w\"\ninput = \"a\"\nsize = \"1m\"\nsizee = \"2m\"\n";
        let (line, msg) = err(extra);
        assert_eq!(line, line_of(extra, "sizee"));
        assert!(msg.contains("unknown field `sizee`"), "{msg}");
    }

    #[test]
    fn unknown_name() {
        let extra = "\n[[window]]\nname = \"w\"\ninput = \"nope\"\nsize = \"1m\"\n";
        let (line, msg) = err(extra);
        assert_eq!(line, line_of(extra, "\"nope\""));
        assert!(msg.contains("input `nope` is neither a stream nor a window"), "{msg}");
    }

    #[test]
    fn duplicate_name() {
        let extra = "\n[[window]]\nname = \"a\"\ninput = \"a\"\nsize = \"1m\"\n";
        let (line, msg) = err(extra);
        assert_eq!(line, line_of(extra, "name = \"a\"\ninput"));
        assert!(msg.contains("duplicate name `a`: a stream already has it"), "{msg}");
    }

    #[test]
    fn rollup_cycle() {
        let extra = "\n[[window]]\nname = \"x\"\ninput = \"y\"\nsize = \"1m\"\n\n[[window]]\nname = \"y\"\ninput = \"x\"\nsize = \"5m\"\n";
        let (line, msg) = err(extra);
        assert!(msg.contains("rollup cycle: x → y → x") || msg.contains("rollup cycle: y → x → y"), "{msg}");
        assert!(line == line_of(extra, "input = \"y\"") || line == line_of(extra, "input = \"x\""));
    }

    #[test]
    fn bucket_join_of_unequal_windows() {
        let extra = r#"
[[stream]]
name = "b"
topics = ["s/{dev}/b"]
key = "{dev}"

[[window]]
name = "a1"
input = "a"
size = "1m"

[[window]]
name = "b5"
input = "b"
size = "5m"

[[join]]
name = "j"
strategy = "bucket"
left = "a1"
right = "b5"
"#;
        let (line, msg) = err(extra);
        assert_eq!(line, line_of(extra, "right = \"b5\""));
        assert!(msg.contains("a bucket join needs equal windows"), "{msg}");
        assert!(msg.contains("use strategy = \"overlap\""), "{msg}");
    }

    #[test]
    fn capacity_zero() {
        let extra = "\n[[stream]]\nname = \"b\"\ntopics = [\"x\"]\ncapacity = 0\n";
        let (line, msg) = err(extra);
        assert_eq!(line, line_of(extra, "capacity = 0"));
        assert!(msg.contains("stream `b`: capacity = 0: it must be at least 1"), "{msg}");
    }

    #[test]
    fn too_many_values() {
        let vals: Vec<String> = (0..17).map(|i| format!("\"v{i}\"")).collect();
        let extra = format!("\n[[stream]]\nname = \"b\"\ntopics = [\"x\"]\nvalues = [{}]\n", vals.join(", "));
        let (line, msg) = err(&extra);
        assert_eq!(line, line_of(&extra, "values = [\"v0"));
        assert!(msg.contains("17 values listed; at most 16 per event"), "{msg}");
    }

    #[test]
    fn bad_duration() {
        let extra = "\n[[window]]\nname = \"w\"\ninput = \"a\"\nsize = \"5 fortnights\"\n";
        let (line, msg) = err(extra);
        assert_eq!(line, line_of(extra, "5 fortnights"));
        assert!(msg.contains("window `w`: size: `5 fortnights` is not a duration"), "{msg}");
    }

    #[test]
    fn state_too_large_to_allocate() {
        // 1 ms slides with a day of lateness: 86 million windows per key
        let extra = "\n[[window]]\nname = \"w\"\ninput = \"a\"\nsize = \"1s\"\nslide = \"1ms\"\n";
        let text =
            format!("{BASE}{extra}").replace("values = [\"v\"]", "values = [\"v\"]\nlateness = \"1d\"");
        let err = parse(Path::new("gw.toml"), &text).unwrap_err().to_string();
        assert!(err.contains("of engine state, more than the 2.0 GiB"), "{err}");
    }

    #[test]
    fn other_refusals() {
        for (extra, want) in [
            ("\n[[join]]\nname = \"j\"\nstrategy = \"tolerance\"\nleft = \"a\"\nright = \"a\"\nlower = \"1m\"\nupper = \"-1m\"\n", "is greater than upper"),
            ("\n[[window]]\nname = \"w\"\ninput = \"a\"\nsize = \"1m\"\naggregates = { x = \"median(v)\" }\n", "aggregate `x = \"median(v)\"`"),
            ("\n[[window]]\nname = \"w\"\ninput = \"a\"\nsize = \"1m\"\naggregates = { x = \"sum(nope)\" }\n", "reads `nope`, which the input does not carry"),
            ("\n[[window]]\nname = \"w\"\ninput = \"a\"\nsize = \"1m\"\ngap = \"1m\"\n", "either `size`"),
            ("\n[[stream]]\nname = \"b\"\ntopics = [\"x/{d}\"]\nkey = \"{dev}\"\n", "has no capture `{dev}`"),
            ("\n[[stream]]\nname = \"b\"\ntopics = [\"x/#/y\"]\n", "`#` may only be the last level"),
            ("\n[[stream]]\nname = \"b\"\ntopics = [\"x\"]\nclock = \"sundial\"\n", "unknown variant `sundial`"),
            ("\n[[join]]\nname = \"j\"\nstrategy = \"bucket\"\nleft = \"a\"\nright = \"a\"\n", "is a stream; a bucket join reads windows"),
        ] {
            let (_, msg) = err(extra);
            assert!(msg.contains(want), "{msg} lacks {want}");
        }
    }
}
