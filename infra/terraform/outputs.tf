output "function_url" {
  description = "URL the connector calls; also the audience of its ID tokens."
  value       = google_cloudfunctions2_function.verify.service_config[0].uri
}

output "connector_service_account_email" {
  description = "Account the on-prem connector authenticates as (key file or Workload Identity Federation)."
  value       = google_service_account.connector.email
}

output "runtime_service_account_email" {
  description = "Identity the function runs as."
  value       = google_service_account.runtime.email
}

output "mxface_key_secret" {
  description = "Secret that holds the MXFace key: add its value with `gcloud secrets versions add`."
  value       = google_secret_manager_secret.mxface_key.id
}

output "webex_bot_token_secret" {
  description = "Secret that holds the Webex bot token: add its value with `gcloud secrets versions add`."
  value       = google_secret_manager_secret.webex_bot_token.id
}
