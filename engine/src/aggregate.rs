//! Aggregate state of one window for one aggregate: count, sum, min, max,
//! mean, first, last and (sample) stddev, in 32 fixed bytes, mergeable (session
//! windows merge when an event bridges them).

use crate::plan::AggFunc;

/// One aggregate's running state. Field use depends on the function:
/// `n` counts values (for first/last: the arrival sequence of the kept value);
/// `a`/`b` hold sum, extreme, or Welford's mean and M2; `t` the event time of
/// the kept first/last value.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AggState {
    pub n: u64,
    pub a: f64,
    pub b: f64,
    pub t: i64,
}

impl AggState {
    pub const EMPTY: AggState = AggState { n: 0, a: 0.0, b: 0.0, t: i64::MIN };

    /// Adds one value `v` (present) with event time `ts` and arrival `seq`.
    #[inline]
    pub fn add(&mut self, f: AggFunc, v: f64, ts: i64, seq: u64) {
        match f {
            AggFunc::Count => self.n += 1,
            AggFunc::Sum | AggFunc::Mean => {
                self.n += 1;
                self.a += v;
            }
            AggFunc::Min => {
                if self.n == 0 || v < self.a {
                    self.a = v;
                }
                self.n += 1;
            }
            AggFunc::Max => {
                if self.n == 0 || v > self.a {
                    self.a = v;
                }
                self.n += 1;
            }
            // first by event time, ties: the earlier arrival (kept as is)
            AggFunc::First => {
                if self.t == i64::MIN || ts < self.t {
                    self.set_kept(v, ts, seq);
                }
            }
            // last by event time, ties: the later arrival
            AggFunc::Last => {
                if self.t == i64::MIN || ts >= self.t {
                    self.set_kept(v, ts, seq);
                }
            }
            AggFunc::Stddev => {
                self.n += 1;
                let d = v - self.a;
                self.a += d / self.n as f64;
                self.b += d * (v - self.a);
            }
        }
    }

    #[inline]
    fn set_kept(&mut self, v: f64, ts: i64, seq: u64) {
        self.a = v;
        self.t = ts;
        self.n = seq;
    }

    /// Merges `o` (state of the same function) into `self`.
    pub fn merge(&mut self, f: AggFunc, o: &AggState) {
        match f {
            AggFunc::Count => self.n += o.n,
            AggFunc::Sum | AggFunc::Mean => {
                self.n += o.n;
                self.a += o.a;
            }
            AggFunc::Min | AggFunc::Max => {
                if o.n > 0 {
                    let better = if f == AggFunc::Min { o.a < self.a } else { o.a > self.a };
                    if self.n == 0 || better {
                        self.a = o.a;
                    }
                    self.n += o.n;
                }
            }
            AggFunc::First => {
                if o.t != i64::MIN && (self.t == i64::MIN || (o.t, o.n) < (self.t, self.n)) {
                    *self = *o;
                }
            }
            AggFunc::Last => {
                if o.t != i64::MIN && (self.t == i64::MIN || (o.t, o.n) > (self.t, self.n)) {
                    *self = *o;
                }
            }
            AggFunc::Stddev => {
                if o.n == 0 {
                    return;
                }
                if self.n == 0 {
                    *self = *o;
                    return;
                }
                // Chan et al.'s parallel combination of Welford states
                let n = self.n + o.n;
                let d = o.a - self.a;
                let mean = self.a + d * o.n as f64 / n as f64;
                self.b += o.b + d * d * (self.n as f64 * o.n as f64) / n as f64;
                self.a = mean;
                self.n = n;
            }
        }
    }

    /// The aggregate's value; `None` (JSON null) where it is undefined.
    pub fn value(&self, f: AggFunc) -> Option<f64> {
        match f {
            AggFunc::Count => Some(self.n as f64),
            AggFunc::Sum => (self.n > 0).then_some(self.a),
            AggFunc::Min | AggFunc::Max => (self.n > 0).then_some(self.a),
            AggFunc::Mean => (self.n > 0).then(|| self.a / self.n as f64),
            AggFunc::First | AggFunc::Last => (self.t != i64::MIN).then_some(self.a),
            AggFunc::Stddev => {
                (self.n >= 2).then(|| crate::math::sqrt(self.b.max(0.0) / (self.n - 1) as f64))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fold(f: AggFunc, xs: &[(f64, i64)]) -> AggState {
        let mut s = AggState::EMPTY;
        for (i, (v, t)) in xs.iter().enumerate() {
            s.add(f, *v, *t, i as u64);
        }
        s
    }

    #[test]
    fn values() {
        let xs = [(2.0, 5), (4.0, 1), (4.0, 9), (5.0, 9), (5.0, 3), (7.0, 2), (9.0, 1)];
        assert_eq!(fold(AggFunc::Count, &xs).value(AggFunc::Count), Some(7.0));
        assert_eq!(fold(AggFunc::Sum, &xs).value(AggFunc::Sum), Some(36.0));
        assert_eq!(fold(AggFunc::Min, &xs).value(AggFunc::Min), Some(2.0));
        assert_eq!(fold(AggFunc::Max, &xs).value(AggFunc::Max), Some(9.0));
        assert!((fold(AggFunc::Mean, &xs).value(AggFunc::Mean).unwrap() - 36.0 / 7.0).abs() < 1e-12);
        // ties by arrival: first keeps the earlier arrival at t=1 (4.0); last the later at t=9 (5.0)
        assert_eq!(fold(AggFunc::First, &xs).value(AggFunc::First), Some(4.0));
        assert_eq!(fold(AggFunc::Last, &xs).value(AggFunc::Last), Some(5.0));
        let sd = fold(AggFunc::Stddev, &xs).value(AggFunc::Stddev).unwrap();
        let mean = 36.0 / 7.0;
        let var = xs.iter().map(|(v, _)| (v - mean) * (v - mean)).sum::<f64>() / 6.0;
        assert!((sd - var.sqrt()).abs() < 1e-12);
        assert_eq!(fold(AggFunc::Stddev, &xs[..1]).value(AggFunc::Stddev), None);
        assert_eq!(AggState::EMPTY.value(AggFunc::Mean), None);
    }

    #[test]
    fn merge_equals_fold() {
        let xs = [(2.0, 5), (4.0, 1), (4.0, 9), (5.0, 9), (5.0, 3), (7.0, 2), (9.0, 1)];
        for f in [
            AggFunc::Count,
            AggFunc::Sum,
            AggFunc::Min,
            AggFunc::Max,
            AggFunc::Mean,
            AggFunc::First,
            AggFunc::Last,
            AggFunc::Stddev,
        ] {
            let all = fold(f, &xs);
            for cut in 0..=xs.len() {
                let mut a = AggState::EMPTY;
                let mut b = AggState::EMPTY;
                for (i, (v, t)) in xs.iter().enumerate() {
                    if i < cut {
                        a.add(f, *v, *t, i as u64)
                    } else {
                        b.add(f, *v, *t, i as u64)
                    }
                }
                let mut m1 = a;
                m1.merge(f, &b);
                let mut m2 = b;
                m2.merge(f, &a);
                for m in [m1, m2] {
                    let (x, y) = (m.value(f), all.value(f));
                    assert!(
                        match (x, y) {
                            (Some(x), Some(y)) => (x - y).abs() < 1e-9,
                            (None, None) => true,
                            _ => false,
                        },
                        "{f:?} cut {cut}: {x:?} vs {y:?}"
                    );
                }
            }
        }
    }
}
