// The diesel table definitions for the migrations in the top-level
// `migrations/` folder. Written to match them column for column; a test
// (`tests/storage.rs`) checks every column against the migrated database.

diesel::table! {
    web_api_tokens (id) {
        id -> Int4,
        #[max_length = 255]
        name -> Varchar,
        #[max_length = 128]
        token_hash -> Varchar,
        #[max_length = 32]
        token_prefix -> Varchar,
        description -> Nullable<Text>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        expires_at -> Nullable<Timestamptz>,
        last_used_at -> Nullable<Timestamptz>,
        #[max_length = 64]
        last_used_ip -> Nullable<Varchar>,
        is_active -> Bool,
        #[max_length = 255]
        created_by -> Nullable<Varchar>,
        bot_token_id -> Nullable<Int4>,
    }
}

diesel::table! {
    webhooks (id) {
        id -> Int4,
        #[max_length = 255]
        name -> Varchar,
        url -> Nullable<Text>,
        secret -> Nullable<Text>,
        #[max_length = 50]
        event_type -> Varchar,
        is_active -> Bool,
        description -> Nullable<Text>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        last_triggered_at -> Nullable<Timestamptz>,
        failure_count -> Int8,
        success_count -> Int8,
        previous_secret -> Nullable<Text>,
        previous_secret_expires_at -> Nullable<Timestamptz>,
        failing_since -> Nullable<Timestamptz>,
        disabled_reason -> Nullable<Text>,
        #[max_length = 20]
        body_format -> Varchar,
        event_types -> Nullable<Array<Text>>,
        payload_filter -> Nullable<Jsonb>,
        headers -> Nullable<Jsonb>,
        auth -> Nullable<Jsonb>,
        #[max_length = 20]
        signature_scheme -> Varchar,
        #[max_length = 20]
        mode -> Varchar,
        pull_epoch -> Nullable<Text>,
        pull_seq -> Nullable<Int8>,
        rate_limit_per_s -> Nullable<Float8>,
        rate_burst -> Nullable<Int4>,
        ordered -> Bool,
        ordered_since -> Nullable<Timestamptz>,
        circuit_threshold -> Nullable<Int4>,
        circuit_cooldown_s -> Nullable<Int4>,
    }
}

diesel::table! {
    webhook_deliveries (id) {
        id -> Int8,
        webhook_id -> Int4,
        #[max_length = 50]
        event_type -> Varchar,
        payload -> Jsonb,
        response_status -> Nullable<Int4>,
        response_body -> Nullable<Text>,
        #[max_length = 20]
        status -> Varchar,
        error_message -> Nullable<Text>,
        attempt_number -> Int4,
        created_at -> Timestamptz,
        delivered_at -> Nullable<Timestamptz>,
        next_retry_at -> Nullable<Timestamptz>,
        #[max_length = 64]
        event_id -> Nullable<Varchar>,
        #[max_length = 128]
        traceparent -> Nullable<Varchar>,
        body -> Nullable<Text>,
        #[max_length = 20]
        held -> Nullable<Varchar>,
    }
}

diesel::table! {
    webhook_circuit (webhook_id) {
        webhook_id -> Int4,
        #[max_length = 20]
        state -> Varchar,
        since -> Timestamptz,
        consecutive_failures -> Int4,
    }
}

diesel::table! {
    webhook_rate (webhook_id) {
        webhook_id -> Int4,
        tat -> Timestamptz,
        tail -> Timestamptz,
    }
}

diesel::table! {
    /// Partitioned by `processed_at`; no primary key (an event processed
    /// twice has two rows), so the one named here is only diesel's.
    delivery_events (event_id, processed_at) {
        #[max_length = 64]
        event_id -> Varchar,
        #[max_length = 50]
        event_type -> Varchar,
        stream_seq -> Int8,
        published_at -> Timestamptz,
        processed_at -> Timestamptz,
        matched -> Array<Int4>,
        filtered -> Array<Int4>,
    }
}

diesel::table! {
    webhook_delivery_counts (webhook_id, day, status) {
        webhook_id -> Int4,
        day -> Date,
        #[max_length = 20]
        status -> Varchar,
        n -> Int8,
    }
}

diesel::table! {
    delivery_day_counts (day, status) {
        day -> Date,
        #[max_length = 20]
        status -> Varchar,
        n -> Int8,
    }
}

diesel::table! {
    webhook_jobs (id) {
        id -> Int8,
        webhook_id -> Int4,
        #[max_length = 20]
        kind -> Varchar,
        #[max_length = 20]
        status -> Varchar,
        since -> Nullable<Timestamptz>,
        until -> Nullable<Timestamptz>,
        since_seq -> Nullable<Int8>,
        #[max_length = 20]
        delivery_status -> Nullable<Varchar>,
        rate_per_s -> Int4,
        total -> Nullable<Int8>,
        done -> Int8,
        failed -> Int8,
        unavailable -> Int8,
        progress_key -> Nullable<Int8>,
        end_key -> Nullable<Int8>,
        error -> Nullable<Text>,
        #[max_length = 64]
        lease_owner -> Nullable<Varchar>,
        lease_until -> Nullable<Timestamptz>,
        created_at -> Timestamptz,
        started_at -> Nullable<Timestamptz>,
        finished_at -> Nullable<Timestamptz>,
        updated_at -> Timestamptz,
    }
}

diesel::joinable!(webhook_deliveries -> webhooks (webhook_id));
diesel::joinable!(webhook_jobs -> webhooks (webhook_id));
diesel::joinable!(webhook_rate -> webhooks (webhook_id));
diesel::joinable!(webhook_circuit -> webhooks (webhook_id));
diesel::joinable!(webhook_delivery_counts -> webhooks (webhook_id));

diesel::allow_tables_to_appear_in_same_query!(
    web_api_tokens,
    webhooks,
    webhook_deliveries,
    webhook_delivery_counts,
    delivery_day_counts,
    webhook_jobs,
    webhook_rate,
    webhook_circuit,
    delivery_events
);
