//! `[[stream]]`: topics, key and device fields, format and time unit, clock,
//! watermark, lateness and late policy, values, or a sensor on the I2C bus.

use std::num::NonZeroU32;
use std::time::Duration;

use edgejoin_engine::event::MAX_VALUES;
use edgejoin_engine::plan::*;
use edgejoin_engine::topic::{TopicPattern, TopicTemplate, Var};

use super::check::{nonneg, positive, Checker, ConfigError, MAX_CAPACITY, MAX_KEYS, S};
use super::deployment::{i2c_topic, I2cSource};
use super::raw::{RawLate, RawStream};

pub(super) fn field_ref(
    ck: &Checker<'_>,
    spec: Option<&S<String>>,
    topics: &[TopicPattern],
    format: Format,
    what: &str,
) -> Result<Option<FieldRef>, ConfigError> {
    let Some(spec) = spec else { return Ok(None) };
    let text = spec.get_ref().trim();
    if let Some(name) = text.strip_prefix('{').and_then(|r| r.strip_suffix('}')) {
        let mut index_per_topic = Vec::with_capacity(topics.len());
        for t in topics {
            match t.capture_index(name) {
                Some(i) => index_per_topic.push(i),
                None => {
                    return Err(ck.err(
                        spec.span(),
                        format!("{what} = \"{text}\": topic `{}` has no capture `{{{name}}}`", t.text()),
                    ))
                }
            }
        }
        return Ok(Some(FieldRef::Capture { name: name.to_string(), index_per_topic }));
    }
    if let Some(field) = text.strip_prefix("$.") {
        if field.is_empty() || field.contains(['.', '[', ']']) {
            return Err(ck.err(
                spec.span(),
                format!("{what} = \"{text}\": only a top-level payload field (`$.name`) is supported"),
            ));
        }
        match format {
            Format::Number => {
                return Err(ck.err(
                    spec.span(),
                    format!(
                        "{what} = \"{text}\": a `number` payload has no fields; take it from a topic capture"
                    ),
                ))
            }
            Format::Postcard if field != "key" && field != "device" => {
                return Err(ck.err(
                    spec.span(),
                    format!("{what} = \"{text}\": a postcard payload carries only `$.key` and `$.device`"),
                ))
            }
            _ => {}
        }
        return Ok(Some(FieldRef::Payload(field.to_string())));
    }
    Err(ck.err(
        spec.span(),
        format!("{what} = \"{text}\": write \"{{capture}}\" for a topic capture or \"$.field\" for a payload field"),
    ))
}

pub(super) fn build_stream(
    ck: &Checker<'_>,
    s: &RawStream,
    index: usize,
) -> Result<(StreamDef, Option<I2cSource>), ConfigError> {
    let name = s.name.get_ref().clone();
    let ctx = |what: &str| format!("stream `{name}`: {what}");
    let i2c = match &s.i2c {
        Some(i) => {
            let r = i.get_ref();
            if let Some(t) = &s.topics {
                return Err(
                    ck.err(t.span(), ctx("an `i2c` stream has no topics: its readings come from the bus"))
                );
            }
            if s.clock.as_ref().is_some_and(|c| *c.get_ref() != Clock::Receive) {
                return Err(ck.err(
                    i.span(),
                    ctx("an `i2c` reading is stamped with its receive time: clock = \"receive\""),
                ));
            }
            let address = match r.address {
                Some(a) if (0x03..=0x77).contains(&a) => a as u8,
                Some(a) => {
                    return Err(ck.err(i.span(), ctx(&format!("i2c address {a:#x} is outside 0x03..0x77"))))
                }
                None => r.sensor.default_address(),
            };
            Some(I2cSource {
                stream: index,
                bus: r.bus.clone().into(),
                model: r.sensor,
                address,
                period: Duration::from_millis(match &r.period {
                    Some(p) => positive(ck, p, &ctx("i2c period"))?,
                    None => 2_000,
                } as u64),
            })
        }
        None => None,
    };
    let mut topics = Vec::new();
    match (&s.topics, &i2c) {
        (Some(ts), _) => {
            if ts.get_ref().is_empty() {
                return Err(ck.err(ts.span(), ctx("`topics` needs at least one topic pattern")));
            }
            for t in ts.get_ref() {
                topics.push(TopicPattern::parse(t.get_ref()).map_err(|e| ck.err(t.span(), ctx(&e)))?);
            }
        }
        (None, Some(_)) => {
            topics.push(TopicPattern::parse(&i2c_topic(&name)).map_err(|e| ck.err(s.name.span(), ctx(&e)))?)
        }
        (None, None) => {
            return Err(
                ck.err(s.name.span(), ctx("needs `topics` (MQTT) or `i2c` (a sensor on the local bus)"))
            )
        }
    }
    let format = s.format.as_ref().map_or(Format::Json, |f| *f.get_ref());
    let key = field_ref(ck, s.key.as_ref(), &topics, format, &ctx("key"))?.unwrap_or(FieldRef::Constant);
    let device =
        field_ref(ck, s.device.as_ref(), &topics, format, &ctx("device"))?.unwrap_or_else(|| key.clone());
    let time_unit = s.time_unit.as_ref().map_or(TimeUnit::Ms, |t| *t.get_ref());
    let clock = s.clock.as_ref().map_or(Clock::Device, |c| *c.get_ref());
    if format == Format::Number {
        if let Some(c) = &s.clock {
            if *c.get_ref() != Clock::Receive {
                return Err(
                    ck.err(c.span(), ctx("a `number` payload carries no timestamp: use clock = \"receive\""))
                );
            }
        }
    }
    if format == Format::Postcard && time_unit == TimeUnit::Rfc3339 {
        let t = s.time_unit.as_ref().expect("set when rfc3339");
        return Err(ck.err(t.span(), ctx("a postcard payload's `ts` is an integer: pick s, ms, us or ns")));
    }
    let clock = if format == Format::Number || i2c.is_some() { Clock::Receive } else { clock };
    let lateness_ms = match &s.lateness {
        Some(l) => nonneg(ck, l, &ctx("lateness"))?,
        None => 0,
    };
    let idle_timeout_ms = match &s.idle_timeout {
        Some(l) => {
            let v = ck.duration(l, &ctx("idle_timeout"))?;
            if v <= 0 {
                return Err(ck.err(
                    l.span(),
                    ctx("idle_timeout must be positive (omit it to never treat the stream as idle)"),
                ));
            }
            Some(v)
        }
        None => None,
    };
    let max_future_ms = match &s.max_future {
        Some(l) => nonneg(ck, l, &ctx("max_future"))?,
        None => 5_000,
    };
    let capacity = match &s.capacity {
        Some(c) => ck.count(c, &ctx("capacity"), MAX_CAPACITY)?,
        None => NonZeroU32::new(64).expect("non-zero"),
    };
    let max_keys = match &s.max_keys {
        Some(c) => ck.count(c, &ctx("max_keys"), MAX_KEYS)?,
        None => NonZeroU32::new(1024).expect("non-zero"),
    };
    let late = match &s.late {
        Some(l) if *l.get_ref() == RawLate::Route => {
            let text = s.late_topic.as_ref().map_or("late/{stream}/{key}", |t| t.get_ref().as_str());
            let tpl = TopicTemplate::parse(text, &[Var::Stream, Var::Key, Var::Gateway])
                .map_err(|e| ck.err(s.late_topic.as_ref().map_or(l.span(), |t| t.span()), ctx(&e)))?;
            LatePolicy::Route(tpl)
        }
        _ => {
            if let Some(t) = &s.late_topic {
                return Err(ck.err(t.span(), ctx("late_topic is only used with late = \"route\"")));
            }
            LatePolicy::Drop
        }
    };
    let values: Vec<String> = match &s.values {
        Some(v) => {
            if v.get_ref().len() > MAX_VALUES {
                return Err(ck.err(
                    v.span(),
                    ctx(&format!("{} values listed; at most {MAX_VALUES} per event", v.get_ref().len())),
                ));
            }
            let mut out: Vec<String> = Vec::new();
            for n in v.get_ref() {
                let n_s = n.get_ref();
                if n_s.is_empty() {
                    return Err(ck.err(n.span(), ctx("a value name may not be empty")));
                }
                if out.contains(n_s) {
                    return Err(ck.err(n.span(), ctx(&format!("value `{n_s}` is listed twice"))));
                }
                out.push(n_s.clone());
            }
            out
        }
        None if format == Format::Number => vec!["value".into()],
        None => match &i2c {
            Some(src) => src.model.fields().iter().map(|f| f.to_string()).collect(),
            None => Vec::new(),
        },
    };
    if let Some(src) = &i2c {
        if let Some(bad) = values.iter().find(|v| !src.model.fields().contains(&v.as_str())) {
            let sp = s.values.as_ref().map_or(s.name.span(), |v| v.span());
            return Err(ck.err(
                sp,
                ctx(&format!("a {:?} reads {}, not `{bad}`", src.model, src.model.fields().join(" and "))),
            ));
        }
    }
    if format == Format::Number && values.len() != 1 {
        let sp = s.values.as_ref().expect("checked").span();
        return Err(ck.err(sp, ctx("a `number` payload is one value: list exactly one name")));
    }
    let time_field = s.time_field.as_ref().map_or("ts".to_string(), |t| t.get_ref().clone());
    let def = StreamDef {
        name,
        topics,
        key,
        device,
        device_named: s.device.is_some(),
        format,
        time_field,
        time_unit,
        clock,
        watermark: s.watermark.as_ref().map_or(WatermarkMode::Stream, |w| *w.get_ref()),
        lateness_ms,
        idle_timeout_ms,
        max_future_ms,
        capacity,
        max_keys,
        late,
        values,
    };
    Ok((def, i2c))
}
