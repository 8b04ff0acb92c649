//! `[homeassistant]`'s names: the numeric values each window and join output
//! carries, as the discovered sensors name them (`units` must name one).

use edgejoin_engine::plan::{Input, Plan};

/// Every numeric value of every output: (output, value name), value names as the sensors have them.
pub fn value_names(p: &Plan) -> Vec<(String, String)> {
    let mut v = Vec::new();
    for w in p.windows.iter().filter(|w| w.emit.is_some()) {
        v.extend(w.output_fields().into_iter().map(|f| (w.name.clone(), f)));
    }
    for j in &p.joins {
        for (side, input) in [("left", j.left), ("right", j.right)] {
            v.extend(input_values(p, input).into_iter().map(|f| (j.name.clone(), format!("{side}_{f}"))));
        }
    }
    v
}

/// The values a join side carries (a window side: its aggregates and `count`).
pub fn input_values(p: &Plan, i: Input) -> Vec<String> {
    match i {
        Input::Stream(s) => p.streams[s].values.clone(),
        Input::Window(w) => p.windows[w].output_fields(),
    }
}
