# The comparison function (Cloud Functions gen2), its source bucket and the APIs it needs.

locals {
  # Sizes per engine: dlib needs about 1 GiB resident, MXFace only waits on HTTPS.
  engine_profiles = {
    local  = { memory = "2Gi", cpu = "1", concurrency = 4 }
    mxface = { memory = "512Mi", cpu = "1", concurrency = 8 }
  }
  profile     = local.engine_profiles[var.face_engine]
  memory      = coalesce(var.memory, local.profile.memory)
  cpu         = coalesce(var.cpu, local.profile.cpu)
  concurrency = coalesce(var.concurrency, local.profile.concurrency)

  uses_mxface   = var.face_engine == "mxface"
  runtime_key   = local.uses_mxface && var.mxface_key_delivery == "runtime"
  pinned_key    = local.uses_mxface && var.mxface_key_delivery == "pinned"
  source_bucket = coalesce(var.source_bucket_name, "${var.project_id}-faceid-fn-source")

  # Empty values are dropped, so each engine and key delivery sets only what it uses.
  environment = {
    for name, value in merge(var.function_settings, {
      FACE_ENGINE = var.face_engine
      # functions-framework's gunicorn runs THREADS threads: match what Cloud Run sends at once.
      THREADS           = tostring(local.concurrency)
      MXFACE_KEY_SECRET = local.runtime_key ? "projects/${var.project_id}/secrets/${var.mxface_key_secret_id}/versions/${var.mxface_key_version}" : ""
    }) : name => value if value != ""
  }

  apis = toset([
    "artifactregistry.googleapis.com",
    "cloudbuild.googleapis.com",
    "cloudfunctions.googleapis.com",
    "iam.googleapis.com",
    "iamcredentials.googleapis.com",
    "run.googleapis.com",
    "secretmanager.googleapis.com",
    "storage.googleapis.com",
  ])
}

resource "google_project_service" "required" {
  for_each = var.enable_apis ? local.apis : toset([])

  project            = var.project_id
  service            = each.value
  disable_on_destroy = false
}

data "archive_file" "function_source" {
  type        = "zip"
  source_dir  = "${path.module}/../../function"
  output_path = "${path.module}/.build/function.zip"
  excludes    = ["**/__pycache__/**", "**/*.pyc", ".gcloudignore"]
}

resource "google_storage_bucket" "source" {
  #checkov:skip=CKV_GCP_62:Holds only the function's public source code; Cloud Audit Logs record who changes it, a second log bucket adds cost without insight.
  name                        = local.source_bucket
  project                     = var.project_id
  location                    = var.region
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = false
  labels                      = var.labels

  versioning {
    enabled = true
  }

  # Each code change replaces the archive object; the replaced one stays 30 days as a
  # noncurrent version (for a rollback), then goes.
  lifecycle_rule {
    condition {
      days_since_noncurrent_time = 30
      with_state                 = "ARCHIVED"
    }
    action {
      type = "Delete"
    }
  }

  depends_on = [google_project_service.required]
}

resource "google_storage_bucket_object" "function_source" {
  # The name carries the archive's hash, so a code change is a new object and a new revision.
  name   = "function/${data.archive_file.function_source.output_md5}.zip"
  bucket = google_storage_bucket.source.name
  source = data.archive_file.function_source.output_path
}

resource "google_cloudfunctions2_function" "verify" {
  #checkov:skip=CKV_GCP_124:The on-prem connector calls over the internet; authentication is IAM-only (run.invoker for the connector account alone, never allUsers), so Google's front end refuses any caller without an invoker's ID token. var.ingress_settings narrows it where a VPC path exists.
  name        = var.function_name
  project     = var.project_id
  location    = var.region
  description = "Face comparison for the RoomOS face login connector."
  labels      = var.labels

  build_config {
    runtime         = "python312"
    entry_point     = "verify_faces"
    service_account = var.build_service_account == null ? null : "projects/${var.project_id}/serviceAccounts/${var.build_service_account}"

    source {
      storage_source {
        bucket = google_storage_bucket.source.name
        object = google_storage_bucket_object.function_source.name
      }
    }
  }

  service_config {
    available_memory                 = local.memory
    available_cpu                    = local.cpu
    max_instance_request_concurrency = local.concurrency
    min_instance_count               = var.min_instances
    max_instance_count               = var.max_instances
    timeout_seconds                  = var.timeout_seconds
    ingress_settings                 = var.ingress_settings
    all_traffic_on_latest_revision   = true
    service_account_email            = google_service_account.runtime.email
    environment_variables            = local.environment

    dynamic "secret_environment_variables" {
      for_each = local.pinned_key ? [var.mxface_key_version] : []
      content {
        key        = "MXFACE_KEY"
        project_id = var.project_id
        secret     = google_secret_manager_secret.mxface_key.secret_id
        version    = secret_environment_variables.value
      }
    }
  }

  depends_on = [
    google_project_service.required,
    google_secret_manager_secret_iam_member.runtime_reads_mxface_key,
  ]
}
