//! The flags benchmarks read: `--bench`, which `cargo bench` passes (without it, as `cargo
//! test --all-targets` runs them, a benchmark is a short smoke test), and `--name value` flags
//! that fall back to an environment variable.

pub struct Args(Vec<String>);

impl Args {
    pub fn from_env() -> Args {
        Args(std::env::args().skip(1).collect())
    }

    /// Run as a benchmark, not as a smoke test.
    pub fn bench(&self) -> bool {
        self.0.iter().any(|a| a == "--bench")
    }

    /// `name`'s value parsed, else `env`'s, else `bench` or `smoke` as this run is one or the other.
    pub fn get<T: std::str::FromStr>(&self, name: &str, env: &str, bench: T, smoke: T) -> T {
        let given = self.0.iter().position(|a| a == name).and_then(|i| self.0.get(i + 1).cloned());
        let value = given.or_else(|| std::env::var(env).ok()).and_then(|v| v.parse().ok());
        value.unwrap_or(if self.bench() { bench } else { smoke })
    }
}
