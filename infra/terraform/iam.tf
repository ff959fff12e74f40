# Identities and secrets. Every grant is on one resource, never on the project.

resource "google_service_account" "runtime" {
  project      = var.project_id
  account_id   = var.runtime_service_account_id
  display_name = "faceid comparison function (runtime)"
  description  = "Runs the comparison function; reads only its own secret."
  depends_on   = [google_project_service.required]
}

resource "google_service_account" "connector" {
  project      = var.project_id
  account_id   = var.connector_service_account_id
  display_name = "faceid on-prem connector"
  description  = "Calls the comparison function from the on-prem connector (run.invoker on that service only)."
  depends_on   = [google_project_service.required]
}

# Secret containers only: values are added out of band (gcloud secrets versions add), so no key
# or token ever lands in Terraform state.
resource "google_secret_manager_secret" "mxface_key" {
  project   = var.project_id
  secret_id = var.mxface_key_secret_id
  labels    = var.labels

  replication {
    auto {}
  }

  depends_on = [google_project_service.required]
}

resource "google_secret_manager_secret" "webex_bot_token" {
  project   = var.project_id
  secret_id = var.webex_bot_token_secret_id
  labels    = var.labels

  replication {
    auto {}
  }

  depends_on = [google_project_service.required]
}

resource "google_secret_manager_secret_iam_member" "runtime_reads_mxface_key" {
  count = local.uses_mxface ? 1 : 0

  project   = var.project_id
  secret_id = google_secret_manager_secret.mxface_key.secret_id
  role      = "roles/secretmanager.secretAccessor"
  member    = "serviceAccount:${google_service_account.runtime.email}"
}

resource "google_secret_manager_secret_iam_member" "connector_reads" {
  for_each = toset(var.connector_readable_secret_ids)

  project   = var.project_id
  secret_id = each.value
  role      = "roles/secretmanager.secretAccessor"
  member    = "serviceAccount:${google_service_account.connector.email}"

  depends_on = [google_secret_manager_secret.mxface_key, google_secret_manager_secret.webex_bot_token]
}

# A gen2 function is served by a Cloud Run service of the same name: invoking it needs
# roles/run.invoker on that service.
resource "google_cloud_run_service_iam_member" "connector_invokes" {
  project  = var.project_id
  location = var.region
  service  = google_cloudfunctions2_function.verify.name
  role     = "roles/run.invoker"
  member   = "serviceAccount:${google_service_account.connector.email}"
}

# Workload Identity Federation (optional): the federated principal mints the connector account's
# ID tokens (impersonated_credentials.IDTokenCredentials calls generateIdToken with the federated
# credentials themselves), so getOpenIdToken on this one account is all it needs.
resource "google_service_account_iam_member" "connector_wif_id_tokens" {
  count = var.connector_workload_identity_principal == "" ? 0 : 1

  service_account_id = google_service_account.connector.name
  role               = "roles/iam.serviceAccountOpenIdTokenCreator"
  member             = var.connector_workload_identity_principal
}
