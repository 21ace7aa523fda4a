//! The gateway's Prometheus metrics.

use std::sync::Arc;

use telemetry::metrics::{Counter, Family, Gauge, Histogram, MetricsRegistry, latency_histogram};

type Labels = Vec<(&'static str, &'static str)>;

/// Why a connection ended (the `reason` label of `gateway_clients_closed`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseKind {
    NoToken,
    InvalidToken,
    Revoked,
    AuthUnavailable,
    TooManyConnections,
    SlowClient,
    WriteTimeout,
    PingTimeout,
    FrameTooLarge,
    ProtocolError,
    ClientClosed,
    Shutdown,
}

impl CloseKind {
    pub fn label(self) -> &'static str {
        match self {
            CloseKind::NoToken => "no_token",
            CloseKind::InvalidToken => "invalid_token",
            CloseKind::Revoked => "token_revoked",
            CloseKind::AuthUnavailable => "auth_unavailable",
            CloseKind::TooManyConnections => "too_many_connections",
            CloseKind::SlowClient => "slow_client",
            CloseKind::WriteTimeout => "write_timeout",
            CloseKind::PingTimeout => "ping_timeout",
            CloseKind::FrameTooLarge => "frame_too_large",
            CloseKind::ProtocolError => "protocol_error",
            CloseKind::ClientClosed => "client_closed",
            CloseKind::Shutdown => "shutdown",
        }
    }
}

/// Every metric the gateway exports.
#[derive(Clone)]
pub struct Metrics {
    pub registry: Arc<MetricsRegistry>,
    pub connections_open: Gauge,
    pub connections_total: Counter,
    pub messages_sent: Counter,
    pub events_received: Counter,
    pub events_invalid: Counter,
    pub replayed: Counter,
    pub resyncs: Counter,
    pub catchup_clients: Gauge,
    pub catchups_started: Counter,
    pub catchups_finished: Counter,
    pub catchup_events: Counter,
    pub clients_closed: Family<Labels, Counter>,
    pub event_to_send: Histogram,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Arc::new(MetricsRegistry::new());
        let m = Self {
            registry: registry.clone(),
            connections_open: Gauge::default(),
            connections_total: Counter::default(),
            messages_sent: Counter::default(),
            events_received: Counter::default(),
            events_invalid: Counter::default(),
            replayed: Counter::default(),
            resyncs: Counter::default(),
            catchup_clients: Gauge::default(),
            catchups_started: Counter::default(),
            catchups_finished: Counter::default(),
            catchup_events: Counter::default(),
            clients_closed: Family::default(),
            event_to_send: latency_histogram(),
        };
        registry.register(
            "gateway_connections_open",
            "WebSocket connections open now",
            m.connections_open.clone(),
        );
        registry.register(
            "gateway_connections",
            "WebSocket connections accepted",
            m.connections_total.clone(),
        );
        registry.register(
            "gateway_messages_sent",
            "Messages written to WebSocket clients (events, replies, replays)",
            m.messages_sent.clone(),
        );
        registry.register(
            "gateway_events_received",
            "Events received from JetStream",
            m.events_received.clone(),
        );
        registry.register(
            "gateway_events_invalid",
            "Stored messages skipped because they are not valid envelopes",
            m.events_invalid.clone(),
        );
        registry.register(
            "gateway_events_replayed",
            "Events sent to clients from a resume replay",
            m.replayed.clone(),
        );
        registry.register(
            "gateway_resync_required",
            "Resumes answered with resync_required",
            m.resyncs.clone(),
        );
        registry.register(
            "gateway_catchup_clients",
            "Clients in catch-up mode now (fed from the stream after their queue overflowed)",
            m.catchup_clients.clone(),
        );
        registry.register(
            "gateway_catchups_started",
            "Catch-ups started",
            m.catchups_started.clone(),
        );
        registry.register(
            "gateway_catchups_finished",
            "Catch-ups that handed the client back to live events",
            m.catchups_finished.clone(),
        );
        registry.register(
            "gateway_catchup_events_sent",
            "Events sent to clients from a catch-up",
            m.catchup_events.clone(),
        );
        registry.register(
            "gateway_clients_closed",
            "Connections closed, by reason",
            m.clients_closed.clone(),
        );
        registry.register(
            "gateway_event_to_send_seconds",
            "Time from an event's timestamp to its send to a client",
            m.event_to_send.clone(),
        );
        m
    }

    pub fn closed(&self, kind: CloseKind) {
        self.clients_closed
            .get_or_create(&vec![("reason", kind.label())])
            .inc();
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
