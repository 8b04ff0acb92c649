//! Home Assistant MQTT discovery (`[homeassistant] discovery = true`): each
//! numeric value of each window and join output becomes a sensor, per key,
//! announced by a retained message on
//! `<prefix>/sensor/<gateway>_<output>_<key>_<value>/config` the first time
//! a result of that output and key is spooled. The engine thread notes the
//! announcements here; the uplink publishes them (retained, before the
//! results queued after them) and all of them again after each connect, so
//! a broker that lost its retained store has them back. At most
//! `max_sensors` are kept (a flood of keys is counted, not announced).

use std::collections::HashSet;

use serde_json::{json, Value};

use crate::config::homeassistant::input_values;
use crate::config::HomeAssistant;
use edgejoin_engine::engine::Output;
use edgejoin_engine::plan::{Input, Plan};

/// The path to a value in a result's JSON, as a Home Assistant template
/// (`['values']` with brackets: `.values` is a dictionary's method there).
fn path(value: &str, window_fields: bool) -> String {
    if value == "count" && window_fields {
        "['count']".into()
    } else {
        format!("['values']['{value}']")
    }
}

/// `s` as a single-quoted Jinja string literal (a key may hold quotes or backslashes).
fn jinja_str(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// `[a-zA-Z0-9_-]`, as Home Assistant wants object ids.
fn object_id(s: &str) -> String {
    s.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '-' { c } else { '_' }).collect()
}

/// The announcements: noted by the engine thread, published by the uplink.
pub struct Discovery {
    cfg: HomeAssistant,
    gateway: String,
    /// `<topic_prefix>/status`: the gateway's presence, each sensor's availability.
    status_topic: String,
    /// (output, key) pairs announced, by a 64-bit hash of them.
    announced: HashSet<u64>,
    /// (config topic, payload), in the order announced.
    pub messages: Vec<(String, Vec<u8>)>,
    /// Results whose output and key got no sensor: over `max_sensors` (a
    /// count of results, not of keys: remembering every refused key would
    /// be the unbounded memory the bound is there to prevent).
    pub unannounced: u64,
}

impl Discovery {
    pub fn new(cfg: HomeAssistant, gateway: &str, topic_prefix: &str) -> Self {
        Discovery {
            cfg,
            gateway: gateway.to_string(),
            status_topic: format!("{topic_prefix}/status"),
            announced: HashSet::new(),
            messages: Vec::new(),
            unannounced: 0,
        }
    }

    /// A result on its way to `topic`: announces its output's sensors for its key, the first time.
    pub fn note(&mut self, p: &Plan, out: &Output<'_>, topic: &str) {
        let (is_join, index, key, tpl) = match out {
            Output::Window(r, t) => (false, r.window, r.key.as_str(), t.text()),
            Output::Join(r) => (true, r.join, r.key.as_str(), p.joins[r.join as usize].topic.text()),
            Output::Late(_) => return,
        };
        // looked up without allocating (a result per message may come this way)
        let seen =
            xxhash_rust::xxh3::xxh3_64_with_seed(key.as_bytes(), u64::from(index) << 1 | u64::from(is_join));
        if self.announced.contains(&seen) {
            return;
        }
        let sensors = self.sensors(p, is_join, index as usize);
        if self.messages.len() + sensors.len() > self.cfg.max_sensors {
            self.unannounced += 1;
            return;
        }
        self.announced.insert(seen);
        // one topic for every key: the template reads only this key's rows
        let shared = !tpl.contains("{key}");
        for (output, value, at) in sensors {
            let id = object_id(&format!("{}_{output}_{key}_{value}", self.gateway));
            let read = format!("value_json{at}");
            let mut template = format!("{{{{ {read} }}}}");
            if let Some(side) = value.strip_prefix("right_").filter(|_| is_join) {
                let _ = side;
                // a left outer join's unmatched row has no right side: the state stays
                template = format!("{{% if value_json['right'] %}}{{{{ {read} }}}}{{% else %}}{{{{ this.state }}}}{{% endif %}}");
            }
            if shared {
                template = format!(
                    "{{% if value_json['key'] == {} %}}{template}{{% else %}}{{{{ this.state }}}}{{% endif %}}",
                    jinja_str(key)
                );
            }
            let unit =
                self.cfg.units.get(&format!("{output}.{value}")).or_else(|| self.cfg.units.get(&value));
            let mut config = json!({
                "name": format!("{output} {key} {value}"),
                "unique_id": id,
                "object_id": id,
                "state_topic": topic,
                "value_template": template,
                "state_class": "measurement",
                "availability_topic": self.status_topic,
                "payload_available": "online",
                "payload_not_available": "offline",
                "device": {
                    "identifiers": [format!("edgejoin_{}", object_id(&self.gateway))],
                    "name": format!("edgejoin {}", self.gateway),
                    "manufacturer": "edgejoin",
                    "model": "edge stream-join gateway",
                    "sw_version": env!("CARGO_PKG_VERSION"),
                },
            });
            if let Some(u) = unit {
                config["unit_of_measurement"] = Value::from(u.as_str());
            }
            let config_topic = format!("{}/sensor/{id}/config", self.cfg.prefix);
            self.messages.push((config_topic, config.to_string().into_bytes()));
        }
    }

    /// An output's sensors: (output name, value name, path in its JSON).
    fn sensors(&self, p: &Plan, is_join: bool, index: usize) -> Vec<(String, String, String)> {
        if !is_join {
            let w = &p.windows[index];
            return w
                .output_fields()
                .into_iter()
                .map(|f| (w.name.clone(), f.clone(), path(&f, true)))
                .collect();
        }
        let j = &p.joins[index];
        let mut v = Vec::new();
        for (side, input) in [("left", j.left), ("right", j.right)] {
            let window = matches!(input, Input::Window(_));
            for f in input_values(p, input) {
                v.push((j.name.clone(), format!("{side}_{f}"), format!("['{side}']{}", path(&f, window))));
            }
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn discover(example: &str, cfg: HomeAssistant) -> (Discovery, Vec<(String, Value)>) {
        let mut d = Discovery::new(cfg, "pi/kitchen", "gw/pi");
        let mut results = Vec::new();
        let mut enc = edgejoin_engine::output::JsonEncoder::new();
        crate::test_util::replay_example(example, &mut |p: &Plan, out: Output<'_>| {
            let key = match &out {
                Output::Window(r, _) => r.key.as_str().to_string(),
                Output::Join(r) => r.key.as_str().to_string(),
                Output::Late(_) => return,
            };
            let topic = format!("gw/pi/out/{key}");
            d.note(p, &out, &topic);
            results.push((topic, serde_json::from_slice(enc.encode(p, out)).unwrap()));
        });
        (d, results)
    }

    fn cfg() -> HomeAssistant {
        HomeAssistant { prefix: "homeassistant".into(), max_sensors: 256, units: Default::default() }
    }

    /// Reads a template's `value_json[..][..]` path in a result, as Home Assistant would.
    fn read(template: &str, row: &Value) -> Option<f64> {
        let start = template.find("{{ value_json[")? + "{{ value_json".len();
        let path = &template[start..template[start..].find(" }}")? + start];
        let mut v = row;
        for part in path.trim_start_matches("['").trim_end_matches("']").split("']['") {
            v = v.get(part)?;
        }
        v.as_f64()
    }

    #[test]
    fn every_window_value_of_every_key_is_a_sensor_reading_its_result() {
        let mut units = std::collections::BTreeMap::new();
        units.insert("temp_1m.avg".to_string(), "°C".to_string());
        let (d, results) = discover("skewed", HomeAssistant { units, ..cfg() });
        // two devices × (avg, n, count)
        assert_eq!(d.messages.len(), 6, "{:?}", d.messages);
        for (topic, payload) in &d.messages {
            let c: Value = serde_json::from_slice(payload).unwrap();
            let id = c["unique_id"].as_str().unwrap();
            assert_eq!(topic, &format!("homeassistant/sensor/{id}/config"));
            assert!(
                id.starts_with("pi_kitchen_temp_1m_")
                    && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            );
            assert_eq!(c["availability_topic"], "gw/pi/status");
            assert_eq!(c["device"]["identifiers"][0], "edgejoin_pi_kitchen");
            let state = c["state_topic"].as_str().unwrap();
            let row = &results.iter().find(|(t, _)| t == state).expect("a result on its state topic").1;
            let got = read(c["value_template"].as_str().unwrap(), row).expect("the template reads a number");
            let name = c["name"].as_str().unwrap();
            let want = if name.ends_with(" count") {
                row["count"].as_f64()
            } else {
                row["values"][name.rsplit(' ').next().unwrap()].as_f64()
            };
            assert_eq!(Some(got), want, "{name}");
            assert_eq!(c["unit_of_measurement"].as_str(), name.ends_with(" avg").then_some("°C"), "{name}");
        }
    }

    #[test]
    fn join_sensors_read_both_sides_and_keep_their_state_without_a_match() {
        let (d, results) = discover("tolerance", cfg());
        assert!(!d.messages.is_empty());
        for (_, payload) in &d.messages {
            let c: Value = serde_json::from_slice(payload).unwrap();
            let t = c["value_template"].as_str().unwrap();
            let row = &results.iter().find(|(t, _)| t == c["state_topic"].as_str().unwrap()).unwrap().1;
            if c["name"].as_str().unwrap().contains(" right_") {
                assert!(
                    t.starts_with("{% if value_json['right'] %}")
                        && t.ends_with("{{ this.state }}{% endif %}"),
                    "{t}"
                );
            }
            if !row["right"].is_null() || c["name"].as_str().unwrap().contains(" left_") {
                assert!(read(t, row).is_some(), "{t} on {row}");
            }
        }
    }

    #[test]
    fn keys_are_quoted_for_the_template() {
        assert_eq!(jinja_str("door"), "'door'");
        assert_eq!(jinja_str("o'neil\\x"), "'o\\'neil\\\\x'");
    }

    #[test]
    fn a_flood_of_keys_is_counted_past_max_sensors() {
        let (d, results) = discover("skewed", HomeAssistant { max_sensors: 4, ..cfg() });
        // the first device's three sensors fit, the second's do not: each of its results is counted
        let first = d.messages[0].1.clone();
        let first: Value = serde_json::from_slice(&first).unwrap();
        let others = results.iter().filter(|(t, _)| t != first["state_topic"].as_str().unwrap()).count();
        assert_eq!((d.messages.len(), d.unannounced), (3, others as u64));
        assert!(others > 0);
    }
}
