//! API tokens: the last active admin cannot be revoked, and the local recovery path mints one.

use crate::fixtures::*;
use outpost_proto::fleet::api::*;
use outpost_server::db::*;

#[tokio::test]
async fn refuses_to_revoke_the_last_admin_token() {
    for (label, db) in databases().await {
        let boot = db.bootstrap_admin_token(NOW).await.unwrap().unwrap();
        let outcome = db.revoke_api_token(&boot.id, "token:bootstrap-admin", NOW).await.unwrap();
        assert_eq!(outcome, RevokeOutcome::LastAdmin, "[{label}]");
        // An expired admin does not count as a way back in.
        let expiring = CreateApiToken { name: "short".into(), role: Role::Admin, expires_in_s: Some(1) };
        db.create_api_token(&expiring, "token:bootstrap-admin", NOW).await.unwrap();
        let later = NOW + 2_000;
        assert_eq!(db.revoke_api_token(&boot.id, "x", later).await.unwrap(), RevokeOutcome::LastAdmin, "[{label}]");
        // With a second live admin the first may go; then the second is the last one.
        let second = CreateApiToken { name: "second".into(), role: Role::Admin, expires_in_s: None };
        let second = db.create_api_token(&second, "token:bootstrap-admin", NOW).await.unwrap();
        assert_eq!(db.revoke_api_token(&boot.id, "x", later).await.unwrap(), RevokeOutcome::Revoked, "[{label}]");
        assert_eq!(db.revoke_api_token(&second.id, "x", later).await.unwrap(), RevokeOutcome::LastAdmin, "[{label}]");
        assert_eq!(db.revoke_api_token("at-missing", "x", later).await.unwrap(), RevokeOutcome::NotFound, "[{label}]");
        // The local recovery path mints a working admin even when every admin is gone.
        let recovered = db.recover_admin_token("recovered", "local:admin-token", later).await.unwrap();
        let found = db.api_token_by_secret(recovered.secret.as_deref().unwrap()).await.unwrap().unwrap();
        assert_eq!((found.role, found.revoked), (Role::Admin, false), "[{label}]");
        assert_eq!(db.revoke_api_token(&second.id, "x", later).await.unwrap(), RevokeOutcome::Revoked, "[{label}]");
    }
}
