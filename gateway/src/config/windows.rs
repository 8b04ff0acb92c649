//! `[[window]]`: tumbling, hopping and session windows over a stream or
//! another window (rollups), their aggregates, and the order they run in.

use std::collections::HashMap;

use edgejoin_engine::plan::*;
use edgejoin_engine::topic::{TopicTemplate, Var};

use super::raw::RawConfig;
use edgejoin_engine::event::MAX_VALUES;

use super::check::{did_you_mean, positive, Checker, ConfigError, MAX_KEYS, S};
use super::units::fixed_length;

pub(super) fn build_windows(
    ck: &Checker<'_>,
    raw: &RawConfig,
    streams: &[StreamDef],
    stream_index: &HashMap<&str, usize>,
) -> Result<Vec<WindowDef>, ConfigError> {
    let raw_index: HashMap<&str, usize> =
        raw.window.iter().enumerate().map(|(i, w)| (w.get_ref().name.get_ref().as_str(), i)).collect();
    // dependency order (inputs first), refusing cycles
    let n = raw.window.len();
    let mut order = Vec::with_capacity(n);
    let mut state = vec![0u8; n]; // 0 new, 1 on the path, 2 done
    for start in 0..n {
        let mut path = vec![start];
        while let Some(&w) = path.last() {
            if state[w] == 2 {
                path.pop();
                continue;
            }
            let rw = raw.window[w].get_ref();
            let input = rw.input.get_ref().as_str();
            let dep = raw_index.get(input).copied();
            if state[w] == 0 {
                state[w] = 1;
                if let Some(d) = dep {
                    if d == w {
                        return Err(ck.err(rw.input.span(), format!("window `{input}` reads itself")));
                    }
                    if state[d] == 1 {
                        let cycle: Vec<&str> = path
                            .iter()
                            .skip_while(|&&x| x != d)
                            .map(|&x| raw.window[x].get_ref().name.get_ref().as_str())
                            .collect();
                        return Err(
                            ck.err(rw.input.span(), format!("rollup cycle: {} → {input}", cycle.join(" → ")))
                        );
                    }
                    if state[d] == 0 {
                        path.push(d);
                        continue;
                    }
                }
            }
            state[w] = 2;
            order.push(w);
            path.pop();
        }
    }

    let mut out: Vec<WindowDef> = Vec::with_capacity(n);
    let mut new_index: HashMap<String, usize> = HashMap::new();
    for &w in &order {
        let rw = raw.window[w].get_ref();
        let name = rw.name.get_ref().clone();
        let ctx = |what: &str| format!("window `{name}`: {what}");
        let input_name = rw.input.get_ref();
        let (input, fields, max_keys_default, input_lateness_ms) =
            if let Some(&s) = stream_index.get(input_name.as_str()) {
                // with per-device watermarks the slowest active device holds the stream: a device
                // up to `max_future` ahead keeps windows open that much longer
                let span = match streams[s].watermark {
                    WatermarkMode::Stream => streams[s].lateness_ms,
                    WatermarkMode::Device => streams[s].lateness_ms.saturating_add(streams[s].max_future_ms),
                };
                (Input::Stream(s), streams[s].values.clone(), streams[s].max_keys, span)
            } else if let Some(&i) = new_index.get(input_name.as_str()) {
                (Input::Window(i), out[i].output_fields(), out[i].max_keys, 0)
            } else {
                return Err(ck.err(
                    rw.input.span(),
                    ctx(&format!(
                        "input `{input_name}` is neither a stream nor a window{}",
                        did_you_mean(
                            input_name,
                            stream_index
                                .keys()
                                .copied()
                                .chain(raw.window.iter().map(|w| w.get_ref().name.get_ref().as_str()))
                        )
                    )),
                ));
            };
        // a window is a fixed length: no years (months are refused in every duration)
        for v in [&rw.size, &rw.slide, &rw.offset, &rw.gap].into_iter().flatten() {
            fixed_length(v.get_ref()).map_err(|e| ck.err(v.span(), ctx(&e)))?;
        }
        let kind = match (&rw.size, &rw.gap) {
            (Some(_), Some(g)) => {
                return Err(ck
                    .err(g.span(), ctx("set either `size` (tumbling/hopping) or `gap` (session), not both")))
            }
            (None, None) => {
                return Err(ck.err(rw.name.span(), ctx("needs `size` (tumbling/hopping) or `gap` (session)")))
            }
            (Some(size), None) => {
                let size_ms = positive(ck, size, &ctx("size"))?;
                let slide_ms = match &rw.slide {
                    Some(s) => positive(ck, s, &ctx("slide"))?,
                    None => size_ms,
                };
                let offset_ms = match &rw.offset {
                    Some(o) => ck.duration(o, &ctx("offset"))?,
                    None => 0,
                };
                WindowKind::Fixed { size_ms, slide_ms, offset_ms: offset_ms.rem_euclid(slide_ms) }
            }
            (None, Some(gap)) => {
                for (f, v) in [("slide", &rw.slide), ("offset", &rw.offset)] {
                    if let Some(v) = v {
                        return Err(
                            ck.err(v.span(), ctx(&format!("`{f}` does not apply to a session window")))
                        );
                    }
                }
                WindowKind::Session { gap_ms: positive(ck, gap, &ctx("gap"))? }
            }
        };
        let mut aggregates = Vec::new();
        match &rw.aggregates {
            Some(a) => {
                if a.get_ref().len() > MAX_VALUES {
                    return Err(ck.err(
                        a.span(),
                        ctx(&format!("{} aggregates; at most {MAX_VALUES}", a.get_ref().len())),
                    ));
                }
                for (agg_name, spec) in a.get_ref() {
                    aggregates.push(parse_agg(ck, agg_name, spec, &fields, &ctx)?);
                }
            }
            None => aggregates.push(AggDef {
                name: "count".into(),
                func: AggFunc::Count,
                field: None,
                field_name: None,
            }),
        }
        if aggregates.iter().any(|a| a.name == "count")
            && raw.window.iter().any(|x| x.get_ref().input.get_ref() == &name)
        {
            let sp = rw.aggregates.as_ref().map_or(rw.name.span(), |a| a.span());
            return Err(ck.err(
                sp,
                ctx("an aggregate named `count` would clash with the `count` a rollup of this window reads"),
            ));
        }
        let max_keys = match &rw.max_keys {
            Some(m) => ck.count(m, &ctx("max_keys"), MAX_KEYS)?,
            None => max_keys_default,
        };
        let topic = match &rw.topic {
            Some(t) => Some(
                TopicTemplate::parse(t.get_ref(), &[Var::Window, Var::Key, Var::Gateway])
                    .map_err(|e| ck.err(t.span(), ctx(&e)))?,
            ),
            None => None,
        };
        new_index.insert(name.clone(), out.len());
        out.push(WindowDef { name, input, kind, aggregates, emit: topic, max_keys, input_lateness_ms });
    }
    // a rolled-up window carries its aggregates plus `count` as values
    for (i, w) in out.iter().enumerate() {
        if out.iter().any(|x| x.input == Input::Window(i)) && w.aggregates.len() + 1 > MAX_VALUES {
            let rw = raw.window[raw_index[w.name.as_str()]].get_ref();
            let sp = rw.aggregates.as_ref().map_or(rw.name.span(), |a| a.span());
            return Err(ck.err(
                sp,
                format!(
                    "window `{}`: a rollup reads its {} aggregates plus `count`, more than {MAX_VALUES} values",
                    w.name,
                    w.aggregates.len()
                ),
            ));
        }
    }
    Ok(out)
}

pub(super) fn parse_agg(
    ck: &Checker<'_>,
    name: &str,
    spec: &S<String>,
    fields: &[String],
    ctx: &dyn Fn(&str) -> String,
) -> Result<AggDef, ConfigError> {
    let text = spec.get_ref().trim();
    let bad = || {
        ck.err(
            spec.span(),
            ctx(&format!(
                "aggregate `{name} = \"{text}\"`: write func(field) with func one of count, sum, min, max, mean, first, last, stddev (count() takes no field)"
            )),
        )
    };
    let open = text.find('(').ok_or_else(bad)?;
    let arg = text[open + 1..].strip_suffix(')').ok_or_else(bad)?.trim();
    let func = AggFunc::from_name(text[..open].trim()).ok_or_else(bad)?;
    if name.is_empty() {
        return Err(ck.err(spec.span(), ctx("an aggregate needs a name")));
    }
    let field = if arg.is_empty() || (func == AggFunc::Count && arg == "*") {
        if func != AggFunc::Count {
            return Err(bad());
        }
        None
    } else {
        match fields.iter().position(|f| f == arg) {
            Some(i) => Some(i),
            None => {
                return Err(ck.err(
                    spec.span(),
                    ctx(&format!(
                        "aggregate `{name}` reads `{arg}`, which the input does not carry (it has: {})",
                        if fields.is_empty() {
                            "no values; list them in the stream's `values`".to_string()
                        } else {
                            fields.join(", ")
                        }
                    )),
                ))
            }
        }
    };
    Ok(AggDef { name: name.to_string(), func, field, field_name: field.map(|_| arg.to_string()) })
}
