//! `[[join]]`: the five strategies (tolerance, asof, bucket, overlap,
//! session) between streams or windows, inner or left outer, and the checks
//! that their two sides can meet.

use std::collections::HashMap;

use edgejoin_engine::plan::*;
use edgejoin_engine::topic::{TopicTemplate, Var};

use super::raw::{RawJoin, RawStrategy};
use super::units::format_duration_ms;
use std::num::NonZeroU32;

use super::check::{did_you_mean, nonneg, Checker, ConfigError, MAX_CAPACITY, S};

pub(super) fn build_join(
    ck: &Checker<'_>,
    j: &RawJoin,
    windows: &[WindowDef],
    stream_index: &HashMap<&str, usize>,
    window_index: &HashMap<&str, usize>,
) -> Result<JoinDef, ConfigError> {
    let name = j.name.get_ref().clone();
    let ctx = |what: &str| format!("join `{name}`: {what}");
    let strat = *j.strategy.get_ref();
    let wants_streams = matches!(strat, RawStrategy::Tolerance | RawStrategy::Asof);
    let resolve = |side: &S<String>, which: &str| -> Result<Input, ConfigError> {
        let n = side.get_ref().as_str();
        if wants_streams {
            match stream_index.get(n) {
                Some(&s) => Ok(Input::Stream(s)),
                None if window_index.contains_key(n) => Err(ck.err(
                    side.span(),
                    ctx(&format!(
                        "{which} `{n}` is a window; a {} join reads raw events of a stream",
                        strategy_name(strat)
                    )),
                )),
                None => Err(ck.err(
                    side.span(),
                    ctx(&format!(
                        "{which} `{n}` is not a stream{}",
                        did_you_mean(n, stream_index.keys().copied())
                    )),
                )),
            }
        } else {
            match window_index.get(n) {
                Some(&w) => Ok(Input::Window(w)),
                None if stream_index.contains_key(n) => Err(ck.err(
                    side.span(),
                    ctx(&format!(
                        "{which} `{n}` is a stream; a {} join reads windows: define a [[window]] over it",
                        strategy_name(strat)
                    )),
                )),
                None => Err(ck.err(
                    side.span(),
                    ctx(&format!(
                        "{which} `{n}` is not a window{}",
                        did_you_mean(n, window_index.keys().copied())
                    )),
                )),
            }
        }
    };
    let left = resolve(&j.left, "left")?;
    let right = resolve(&j.right, "right")?;
    let only = |field: &Option<S<String>>, fname: &str, allowed: bool| -> Result<(), ConfigError> {
        match field {
            Some(f) if !allowed => Err(ck.err(
                f.span(),
                ctx(&format!("`{fname}` does not apply to strategy = \"{}\"", strategy_name(strat))),
            )),
            _ => Ok(()),
        }
    };
    only(&j.lower, "lower", strat == RawStrategy::Tolerance)?;
    only(&j.upper, "upper", strat == RawStrategy::Tolerance)?;
    only(&j.tolerance, "tolerance", matches!(strat, RawStrategy::Asof | RawStrategy::Session))?;
    if let Some(c) = &j.condition {
        if strat != RawStrategy::Overlap {
            return Err(ck.err(c.span(), ctx("`condition` applies only to strategy = \"overlap\"")));
        }
    }
    let win = |i: Input| match i {
        Input::Window(w) => &windows[w],
        Input::Stream(_) => unreachable!("window strategies resolve windows"),
    };
    let strategy = match strat {
        RawStrategy::Tolerance => {
            let lower_ms = match &j.lower {
                Some(l) => ck.duration(l, &ctx("lower"))?,
                None => 0,
            };
            let upper = j.upper.as_ref().ok_or_else(|| {
                ck.err(
                    j.name.span(),
                    ctx("a tolerance join needs `upper` (and optionally `lower`, default 0s)"),
                )
            })?;
            let upper_ms = ck.duration(upper, &ctx("upper"))?;
            if lower_ms > upper_ms {
                return Err(ck.err(
                    upper.span(),
                    ctx(&format!(
                        "lower ({}) is greater than upper ({})",
                        j.lower.as_ref().map_or("0s", |l| l.get_ref().as_str()),
                        upper.get_ref()
                    )),
                ));
            }
            Strategy::Tolerance { lower_ms, upper_ms }
        }
        RawStrategy::Asof => {
            let t = j.tolerance.as_ref().ok_or_else(|| {
                ck.err(j.name.span(), ctx("an asof join needs `tolerance` (how old the right event may be)"))
            })?;
            Strategy::Asof { tolerance_ms: nonneg(ck, t, &ctx("tolerance"))? }
        }
        RawStrategy::Bucket => {
            let (l, r) = (win(left), win(right));
            match (l.kind, r.kind) {
                (
                    WindowKind::Fixed { size_ms: ls, slide_ms: lsl, offset_ms: lo },
                    WindowKind::Fixed { size_ms: rs, slide_ms: rsl, offset_ms: ro },
                ) if ls == lsl && rs == rsl => {
                    if ls != rs || lo != ro {
                        return Err(ck.err(
                            j.right.span(),
                            ctx(&format!(
                                "a bucket join needs equal windows: `{}` is {} at offset {}, `{}` is {} at offset {}; use strategy = \"overlap\" for windows of different sizes or offsets",
                                l.name, format_duration_ms(ls), format_duration_ms(lo),
                                r.name, format_duration_ms(rs), format_duration_ms(ro)
                            )),
                        ));
                    }
                }
                _ => {
                    return Err(ck.err(
                        j.left.span(),
                        ctx("a bucket join joins two tumbling windows (size = slide); use \"overlap\" for hopping windows or \"session\" for sessions"),
                    ))
                }
            }
            Strategy::Bucket
        }
        RawStrategy::Overlap => {
            for (side, i) in [(&j.left, left), (&j.right, right)] {
                if matches!(win(i).kind, WindowKind::Session { .. }) {
                    return Err(ck.err(
                        side.span(),
                        ctx(&format!("`{}` is a session window; use strategy = \"session\"", win(i).name)),
                    ));
                }
            }
            Strategy::Overlap {
                condition: j.condition.as_ref().map_or(OverlapCondition::ContainedStart, |c| *c.get_ref()),
            }
        }
        RawStrategy::Session => {
            for (side, i) in [(&j.left, left), (&j.right, right)] {
                if !matches!(win(i).kind, WindowKind::Session { .. }) {
                    return Err(ck.err(
                        side.span(),
                        ctx(&format!("`{}` is not a session window (it has no `gap`)", win(i).name)),
                    ));
                }
            }
            Strategy::Session {
                tolerance_ms: match &j.tolerance {
                    Some(t) => nonneg(ck, t, &ctx("tolerance"))?,
                    None => 0,
                },
            }
        }
    };
    let max_matches = match &j.max_matches {
        Some(m) => ck.count(m, &ctx("max_matches"), MAX_CAPACITY)?,
        None => NonZeroU32::new(16).expect("non-zero"),
    };
    let topic = match &j.topic {
        Some(t) => TopicTemplate::parse(t.get_ref(), &[Var::Join, Var::Key, Var::Gateway])
            .map_err(|e| ck.err(t.span(), ctx(&e)))?,
        None => TopicTemplate::parse("results/{join}/{key}", &[Var::Join, Var::Key]).expect("valid default"),
    };
    Ok(JoinDef {
        name,
        strategy,
        left,
        right,
        kind: j.kind.as_ref().map_or(JoinType::Inner, |k| *k.get_ref()),
        max_matches,
        topic,
    })
}

pub(super) fn strategy_name(s: RawStrategy) -> &'static str {
    match s {
        RawStrategy::Tolerance => "tolerance",
        RawStrategy::Asof => "asof",
        RawStrategy::Bucket => "bucket",
        RawStrategy::Overlap => "overlap",
        RawStrategy::Session => "session",
    }
}
