//! What the HTTP and gRPC examples share: the Tokio runtime, `--name value` options, message
//! sizes, and leaving with a message.

#![allow(dead_code)] // each example uses part of it

use std::future::Future;

/// Runs `future` on a multi-thread Tokio runtime (hyper and tonic need Tokio).
pub fn block_on<F: Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(future)
}

/// The command line as `--name value` pairs and `--flag`s.
pub struct Args {
    program: &'static str,
    pairs: Vec<(String, Option<String>)>,
}

impl Args {
    /// Reads the command line; `flags` are the options that take no value.
    pub fn parse(program: &'static str, usage: &str, flags: &[&str]) -> Args {
        let mut pairs = Vec::new();
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            if arg == "--help" || arg == "-h" {
                println!("{usage}");
                std::process::exit(0);
            }
            if !arg.starts_with("--") {
                fail(program, &format!("unexpected argument {arg:?}\n{usage}"));
            }
            let value = if flags.contains(&arg.as_str()) {
                None
            } else {
                Some(
                    args.next()
                        .unwrap_or_else(|| fail(program, &format!("{arg} needs a value\n{usage}"))),
                )
            };
            pairs.push((arg, value));
        }
        Args { program, pairs }
    }

    /// The value of `--name`, if given.
    pub fn value(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .rev()
            .find(|(key, _)| key == name)
            .and_then(|(_, value)| value.as_deref())
    }

    /// Whether `--flag` was given.
    pub fn flag(&self, name: &str) -> bool {
        self.pairs.iter().any(|(key, _)| key == name)
    }

    /// The value of `--name` as a number, or `default`.
    pub fn number(&self, name: &str, default: usize) -> usize {
        match self.value(name) {
            None => default,
            Some(text) => text.parse().unwrap_or_else(|_| {
                fail(
                    self.program,
                    &format!("{name} takes a number, not {text:?}"),
                )
            }),
        }
    }

    /// The value of `--name`, which must be given.
    pub fn required(&self, name: &str, usage: &str) -> &str {
        self.value(name)
            .unwrap_or_else(|| fail(self.program, &format!("{name} is required\n{usage}")))
    }

    /// The address of `--name` (`ADDR[:PORT]`), which must be given.
    pub fn addr(&self, name: &str, default_port: u16, usage: &str) -> std::net::SocketAddr {
        let text = self.required(name, usage);
        anyrdma::cm::parse_addr(text, default_port)
            .unwrap_or_else(|err| fail(self.program, &format!("{name} {text}: {err}")))
    }

    /// The sizes of `--name` (`N` or `MIN-MAX`), or `default`.
    pub fn sizes(&self, name: &str, default: Sizes) -> Sizes {
        match self.value(name) {
            None => default,
            Some(text) => Sizes::parse(text).unwrap_or_else(|| {
                fail(
                    self.program,
                    &format!("{name} takes N or MIN-MAX, not {text:?}"),
                )
            }),
        }
    }
}

/// Prints `message` and exits with status 1.
pub fn fail(program: &str, message: &str) -> ! {
    eprintln!("{program}: {message}");
    std::process::exit(1)
}

/// Body sizes: one, or a range that requests spread over.
#[derive(Clone, Copy)]
pub struct Sizes {
    pub min: usize,
    pub max: usize,
}

impl Sizes {
    /// `N` or `MIN-MAX`.
    pub fn parse(text: &str) -> Option<Sizes> {
        let (min, max) = match text.split_once('-') {
            Some((min, max)) => (min.parse().ok()?, max.parse().ok()?),
            None => {
                let size = text.parse().ok()?;
                (size, size)
            }
        };
        (min <= max).then_some(Sizes { min, max })
    }

    /// The size of request `i`: spread evenly (a stride prime to any range) over the range.
    pub fn of(self, i: u64) -> usize {
        let span = (self.max - self.min + 1) as u64;
        self.min + (i.wrapping_mul(7919) % span) as usize
    }
}

impl std::fmt::Display for Sizes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.min == self.max {
            write!(f, "{} bytes", self.min)
        } else {
            write!(f, "{}-{} bytes", self.min, self.max)
        }
    }
}
