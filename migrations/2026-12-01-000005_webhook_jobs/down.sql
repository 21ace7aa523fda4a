DROP TABLE webhook_jobs;
