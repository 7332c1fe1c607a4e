//! The shapes of proxy the search can build ([`Structure`]): an option of the search and the
//! first thing a genome is, in a module of its own so that both `options` and `genome` can
//! name it without importing each other.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The shape of the proxies the search builds (spec §4.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Structure {
    /// The LPZero template `BIN(mean(U..U(x)), mean(U..U(y)))` (the structure of all results).
    #[default]
    Tree,
    /// One input, a chain of unary ops, then the mean.
    Linear,
    /// Two inputs and three DAG nodes, each summing unary-transformed earlier states.
    Graph,
    /// General expression trees up to a maximum depth.
    Free,
    /// The tree template with a per-branch reduction (`mean`, `sum`, `size`, ...), an optional
    /// sum over layers (`total`) and an op after the reduction (`log`, ...).
    Extended,
}

impl Structure {
    /// All structures, in documentation order.
    pub const ALL: [Structure; 5] = [
        Structure::Tree,
        Structure::Linear,
        Structure::Graph,
        Structure::Free,
        Structure::Extended,
    ];

    /// The lower-case name used on the command line and in files.
    pub fn name(self) -> &'static str {
        match self {
            Structure::Tree => "tree",
            Structure::Linear => "linear",
            Structure::Graph => "graph",
            Structure::Free => "free",
            Structure::Extended => "extended",
        }
    }
}

impl fmt::Display for Structure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Structure {
    type Err = String;

    /// Accepts `tree`, `linear`, `graph`, `free` or `extended` (ASCII case-insensitive).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        crate::report::find_named(s, &Self::ALL, Self::name, "structure")
    }
}
