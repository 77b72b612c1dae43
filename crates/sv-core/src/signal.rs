//! Signal names as configs, the control protocol and the CLI spell them.
//!
//! The core only needs to name signals; the runtime maps a [`Signal`] to the platform's number.
//! Names are accepted with or without the `SIG` prefix and in any case (`term`, `SIGTERM`), as
//! supervisord accepts them.

use std::fmt;
use std::str::FromStr;

macro_rules! signals {
    ($($variant:ident = $name:literal),* $(,)?) => {
        /// A signal the supervisor may send or forward.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Signal { $($variant),* }

        impl Signal {
            /// Every signal, in declaration order.
            pub const ALL: &'static [Signal] = &[$(Signal::$variant),*];

            /// The canonical name without the `SIG` prefix, e.g. `"TERM"`.
            pub fn name(self) -> &'static str {
                match self { $(Signal::$variant => $name),* }
            }
        }
    };
}

signals! {
    Hup = "HUP",
    Int = "INT",
    Quit = "QUIT",
    Kill = "KILL",
    Usr1 = "USR1",
    Usr2 = "USR2",
    Term = "TERM",
    Cont = "CONT",
    Stop = "STOP",
    Winch = "WINCH",
    Alrm = "ALRM",
    Pwr = "PWR",
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SIG{}", self.name())
    }
}

/// The error for a name that is not a known signal.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown signal {0:?} (expected one of HUP, INT, QUIT, KILL, USR1, USR2, TERM, CONT, STOP, WINCH, ALRM, PWR)"
)]
pub struct UnknownSignal(pub String);

impl FromStr for Signal {
    type Err = UnknownSignal;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let upper = s.trim().to_ascii_uppercase();
        let bare = upper.strip_prefix("SIG").unwrap_or(&upper);
        Signal::ALL
            .iter()
            .copied()
            .find(|sig| sig.name() == bare)
            .ok_or_else(|| UnknownSignal(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_with_and_without_prefix_in_any_case() {
        assert_eq!("TERM".parse(), Ok(Signal::Term));
        assert_eq!("sigterm".parse(), Ok(Signal::Term));
        assert_eq!(" SIGUSR1 ".parse(), Ok(Signal::Usr1));
        assert!("TERMINATE".parse::<Signal>().is_err());
    }

    #[test]
    fn display_round_trips() {
        for sig in Signal::ALL {
            assert_eq!(sig.to_string().parse::<Signal>(), Ok(*sig));
        }
    }
}
