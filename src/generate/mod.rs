//! Generation building blocks outside the model: sampling, stop strings, cancellation.

mod cancel;
mod sampler;
mod stop;

pub use cancel::CancelToken;
pub(crate) use sampler::Rng;
pub use sampler::{Sampler, SamplingError, SamplingParams};
pub use stop::{StopMatcher, StopOutcome};
