//! Apps with an admin signed in, for the tests of the admin API.

use tasklane_shared::config::Settings;

use crate::{TestApp, email_address};

impl TestApp {
    /// Like [`TestApp::spawn_with`], with an admin account signed up (a worker runs while
    /// its verification email is sent); returns the admin's access token too.
    pub async fn spawn_admin(adjust: impl FnOnce(&mut Settings)) -> (Self, String) {
        let admin = email_address();
        let listed = admin.clone();
        let app = Self::spawn_with(move |s| {
            s.auth.admin_emails = vec![listed];
            adjust(s);
        })
        .await;
        let session = {
            let _worker = app.spawn_worker().await;
            app.register_verified(&admin).await
        };
        let token = session["access_token"].as_str().expect("an access token").to_owned();
        (app, token)
    }
}
