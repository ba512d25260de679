//! The S3 writer (`WriterType = aws-s3`): objects in AWS S3 or an S3-compatible store,
//! with the official AWS SDK.
//!
//! * Credentials come from the standard chain (environment, profile, web identity,
//!   instance/container role); with `S3RoleARN` that role is assumed through STS (at
//!   `S3STSEndpoint` when set) and the SDK refreshes the credentials before they expire.
//! * `S3Endpoint` points at an S3-compatible store and switches to path-style addressing.
//! * Init checks the bucket (`HeadBucket`) and creates it when it is missing.
//! * Objects of at least `S3PartSize` bytes go up as multipart uploads (aborted on failure);
//!   transient errors are retried by the SDK (standard mode, 4 attempts) before the write
//!   is reported failed, so the receiver keeps the data in the recovery bucket.
//! * A bucket that disappeared (a store that lost its state) is created again on write.
//! * Secrets never appear in logs or errors.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};

use aws_config::BehaviorVersion;
use aws_config::retry::RetryConfig;
use aws_config::sts::AssumeRoleProvider;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::{Region, SharedCredentialsProvider};
use aws_sdk_s3::error::DisplayErrorContext;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{
    BucketLocationConstraint, CompletedMultipartUpload, CompletedPart, CreateBucketConfiguration,
};

use super::Writer;
use crate::config::Config;
use crate::error::{Error, Result};

/// Region used when neither `S3Region` nor the environment or profile names one.
pub const DEFAULT_REGION: &str = "us-east-1";

/// Writes objects to an S3 bucket.
pub struct S3Writer {
    runtime: tokio::runtime::Runtime,
    client: Client,
    bucket: String,
    region: String,
    endpoint: String,
    part_size: usize,
    ready: AtomicBool,
}

impl S3Writer {
    /// A writer for the bucket the configuration names (no request is made yet).
    pub fn new(config: &Config) -> Result<S3Writer> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("d2p-s3")
            .enable_all()
            .build()
            .map_err(|e| Error::io("starting the S3 runtime", "", e))?;
        let configured_region = (!config.s3_region.trim().is_empty())
            .then(|| Region::new(config.s3_region.trim().to_string()));
        let (client, region) = run_on(&runtime, async {
            let mut loader = aws_config::defaults(BehaviorVersion::latest());
            if let Some(r) = configured_region.clone() {
                loader = loader.region(r);
            }
            let base = loader.load().await;
            let region = base
                .region()
                .cloned()
                .unwrap_or_else(|| Region::new(DEFAULT_REGION));
            let mut builder = aws_sdk_s3::config::Builder::from(&base)
                .region(region.clone())
                .retry_config(RetryConfig::standard().with_max_attempts(4));
            if !config.s3_endpoint.trim().is_empty() {
                builder = builder
                    .endpoint_url(config.s3_endpoint.trim())
                    .force_path_style(true);
            }
            if !config.s3_role_arn.trim().is_empty() {
                let mut sts =
                    aws_config::defaults(BehaviorVersion::latest()).region(region.clone());
                if !config.s3_sts_endpoint.trim().is_empty() {
                    sts = sts.endpoint_url(config.s3_sts_endpoint.trim());
                }
                let sts = sts.load().await;
                let provider = AssumeRoleProvider::builder(config.s3_role_arn.trim())
                    .session_name("data2parquet")
                    .region(region.clone())
                    .configure(&sts)
                    .build()
                    .await;
                builder = builder.credentials_provider(SharedCredentialsProvider::new(provider));
            }
            (Client::from_conf(builder.build()), region.to_string())
        });
        Ok(S3Writer {
            runtime,
            client,
            bucket: config.s3_bucket_name.trim().to_string(),
            region,
            endpoint: config.s3_endpoint.trim().to_string(),
            part_size: config.s3_part_size,
            ready: AtomicBool::new(false),
        })
    }

    fn block_on<F>(&self, f: F) -> F::Output
    where
        F: Future + Send,
        F::Output: Send,
    {
        run_on(&self.runtime, f)
    }

    async fn create_bucket(&self) -> std::result::Result<(), String> {
        let mut req = self.client.create_bucket().bucket(&self.bucket);
        if self.region != DEFAULT_REGION {
            req = req.create_bucket_configuration(
                CreateBucketConfiguration::builder()
                    .location_constraint(BucketLocationConstraint::from(self.region.as_str()))
                    .build(),
            );
        }
        match req.send().await {
            Ok(_) => Ok(()),
            Err(e) => {
                let text = DisplayErrorContext(&e).to_string();
                if text.contains("BucketAlreadyOwnedByYou") {
                    Ok(())
                } else {
                    Err(text)
                }
            }
        }
    }

    async fn put(&self, name: &str, data: &[u8]) -> std::result::Result<(), String> {
        if data.len() < self.part_size {
            return self
                .client
                .put_object()
                .bucket(&self.bucket)
                .key(name)
                .body(ByteStream::from(data.to_vec()))
                .send()
                .await
                .map(|_| ())
                .map_err(|e| DisplayErrorContext(&e).to_string());
        }
        let upload = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(name)
            .send()
            .await
            .map_err(|e| DisplayErrorContext(&e).to_string())?;
        let upload_id = upload
            .upload_id()
            .ok_or_else(|| "the store returned no multipart upload id".to_string())?
            .to_string();
        let result: std::result::Result<Vec<CompletedPart>, String> = async {
            let mut parts = Vec::new();
            for (i, chunk) in data.chunks(self.part_size).enumerate() {
                let number = i as i32 + 1;
                let part = self
                    .client
                    .upload_part()
                    .bucket(&self.bucket)
                    .key(name)
                    .upload_id(&upload_id)
                    .part_number(number)
                    .body(ByteStream::from(chunk.to_vec()))
                    .send()
                    .await
                    .map_err(|e| DisplayErrorContext(&e).to_string())?;
                parts.push(
                    CompletedPart::builder()
                        .part_number(number)
                        .set_e_tag(part.e_tag().map(str::to_string))
                        .build(),
                );
            }
            Ok(parts)
        }
        .await;
        let completed = match result {
            Ok(parts) => self
                .client
                .complete_multipart_upload()
                .bucket(&self.bucket)
                .key(name)
                .upload_id(&upload_id)
                .multipart_upload(
                    CompletedMultipartUpload::builder()
                        .set_parts(Some(parts))
                        .build(),
                )
                .send()
                .await
                .map(|_| ())
                .map_err(|e| DisplayErrorContext(&e).to_string()),
            Err(e) => Err(e),
        };
        if completed.is_err() {
            let _ = self
                .client
                .abort_multipart_upload()
                .bucket(&self.bucket)
                .key(name)
                .upload_id(&upload_id)
                .send()
                .await;
        }
        completed
    }
}

/// Runs a future to completion on `runtime`, also from a thread that is itself inside a
/// tokio runtime (the HTTP server), where a nested `block_on` would panic.
fn run_on<F>(runtime: &tokio::runtime::Runtime, f: F) -> F::Output
where
    F: Future + Send,
    F::Output: Send,
{
    if tokio::runtime::Handle::try_current().is_ok() {
        std::thread::scope(|s| {
            s.spawn(|| runtime.block_on(f))
                .join()
                .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    } else {
        runtime.block_on(f)
    }
}

impl Writer for S3Writer {
    fn init(&self) -> Result<()> {
        let head = self.block_on(self.client.head_bucket().bucket(&self.bucket).send());
        match head {
            Ok(_) => {}
            Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => {
                log::info!("bucket `{}` does not exist; creating it", self.bucket);
                self.block_on(self.create_bucket()).map_err(|reason| Error::Write {
                    name: String::new(),
                    target: self.target(),
                    reason: format!("creating the bucket (check S3BucketName, S3Region and the credentials): {reason}"),
                    retryable: false,
                })?;
            }
            Err(e) => {
                let status = e.raw_response().map(|r| r.status().as_u16());
                let hint = match status {
                    Some(403) => "HTTP 403, access denied: the credentials (or S3RoleARN) may not use this bucket".to_string(),
                    Some(301 | 400) => "the bucket is in another region (check S3Region)".to_string(),
                    Some(code) => format!("HTTP {code}"),
                    None => "the store cannot be reached (check S3Endpoint and the network)".to_string(),
                };
                return Err(Error::config(
                    "S3BucketName",
                    self.bucket.clone(),
                    format!(
                        "a bucket these credentials can reach at {} (region {}): {hint}; details: {}",
                        if self.endpoint.is_empty() {
                            "AWS S3"
                        } else {
                            &self.endpoint
                        },
                        self.region,
                        DisplayErrorContext(&e)
                    ),
                ));
            }
        }
        self.ready.store(true, Ordering::Relaxed);
        Ok(())
    }

    fn write(&self, name: &str, data: &[u8]) -> Result<()> {
        let mut result = self.block_on(self.put(name, data));
        if matches!(&result, Err(e) if e.contains("NoSuchBucket")) {
            log::warn!("bucket `{}` is gone; creating it again", self.bucket);
            result = self.block_on(async {
                self.create_bucket().await?;
                self.put(name, data).await
            });
        }
        match result {
            Ok(()) => {
                self.ready.store(true, Ordering::Relaxed);
                Ok(())
            }
            Err(reason) => {
                self.ready.store(false, Ordering::Relaxed);
                Err(Error::Write {
                    name: name.to_string(),
                    target: self.target(),
                    reason,
                    retryable: true,
                })
            }
        }
    }

    fn close(&self) -> Result<()> {
        Ok(())
    }

    fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    fn target(&self) -> String {
        if self.endpoint.is_empty() {
            format!("s3://{}", self.bucket)
        } else {
            format!("s3://{} at {}", self.bucket, self.endpoint)
        }
    }
}
