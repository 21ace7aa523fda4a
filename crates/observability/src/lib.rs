//! Checks of the observability files under `deploy/observability/`: the
//! Grafana dashboard and the Prometheus alert rules may only name metrics
//! the services export. The tests of this crate start the services, scrape
//! their `/metrics` and compare; they also follow one event's trace across
//! the services.

pub mod exposition;
pub mod files;
pub mod promql;
