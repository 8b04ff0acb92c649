//! The fuzz targets' CI-sized run (the long campaign is `scripts/torture.sh
//! fuzz`): every committed corpus input and every seed, then seeded
//! mutations of them (bit flips, truncations, splices, repeated and random
//! bytes), through each entry point of `edgejoin::fuzz`. A panic anywhere is
//! a failed test; each crash the campaign finds is added to the corpus, so
//! this run keeps it fixed.
//!
//! `EDGEJOIN_WRITE_SEEDS=1` writes each target's seeds into `fuzz/corpus/`.

use std::path::{Path, PathBuf};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn mutate(rng: &mut Rng, input: &[u8], other: &[u8]) -> Vec<u8> {
    let mut v = input.to_vec();
    for _ in 0..1 + rng.below(4) {
        match rng.below(7) {
            0 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] ^= 1 << rng.below(8);
            }
            1 => v.truncate(rng.below(v.len() + 1)),
            2 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] = [0, 0xff, b'"', b'{', b'}', b'[', b'\n', b'9', b'-', b'e', b'/', b'#', b'+']
                    [rng.below(13)];
            }
            3 => {
                // splice in a piece of another input
                let at = rng.below(v.len() + 1);
                let a = rng.below(other.len() + 1);
                let b = a + rng.below(other.len() - a + 1);
                v.splice(at..at, other[a..b].iter().copied());
            }
            4 => {
                let at = rng.below(v.len() + 1);
                let n = rng.below(64);
                let byte = (rng.next() & 0xff) as u8;
                v.splice(at..at, std::iter::repeat_n(byte, n));
            }
            5 if !v.is_empty() => {
                let a = rng.below(v.len());
                let b = a + rng.below(v.len() - a);
                v.drain(a..b);
            }
            _ => {
                let at = rng.below(v.len() + 1);
                let n = rng.below(16);
                let bytes: Vec<u8> = (0..n).map(|_| (rng.next() & 0xff) as u8).collect();
                v.splice(at..at, bytes);
            }
        }
    }
    v
}

fn corpus(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus").join(target)
}

#[test]
fn every_fuzz_target_survives_its_corpus_and_mutations() {
    let per_target: usize =
        std::env::var("EDGEJOIN_FUZZ_SMOKE").ok().and_then(|v| v.parse().ok()).unwrap_or(3000);
    for (name, target) in edgejoin::fuzz::TARGETS {
        let seeds = edgejoin::fuzz::seeds(name);
        assert!(!seeds.is_empty(), "{name}: no seeds");
        if std::env::var_os("EDGEJOIN_WRITE_SEEDS").is_some() {
            std::fs::create_dir_all(corpus(name)).unwrap();
            for (i, s) in seeds.iter().enumerate() {
                std::fs::write(corpus(name).join(format!("seed-{i}")), s).unwrap();
            }
        }
        let mut inputs = seeds;
        if let Ok(dir) = std::fs::read_dir(corpus(name)) {
            let mut files: Vec<PathBuf> = dir.map(|e| e.unwrap().path()).collect();
            files.sort();
            inputs.extend(files.iter().map(|f| std::fs::read(f).unwrap()));
        }
        for input in &inputs {
            target(input);
        }
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ name.len() as u64);
        for _ in 0..per_target {
            let a = &inputs[rng.below(inputs.len())];
            let b = &inputs[rng.below(inputs.len())];
            let m = mutate(&mut rng, a, b);
            target(&m);
        }
    }
}
