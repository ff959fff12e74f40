# The comparison function (Cloud Functions gen2), its source bucket and the APIs it needs.

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
