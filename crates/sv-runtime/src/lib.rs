//! IO runtime of iot2mqtt-sv: drives the pure [`sv_core::machine`] with real processes,
//! signals, pipes and sockets.
