"""Reviews: progress, agreement between reviewers (Cohen's kappa), verdicts per item, the
audit trail, and CSV exports.  Thin over discovery.reviews and the store."""

import streamlit as st

from app import common
from discovery.reviews import pairwise_agreement, progress, verdict_table

AUDIT_SHOWN = 200
REVIEW_EXPORT_COLUMNS = ["item_type", "item_id", "reviewer", "verdict", "note", "updated_at"]
AUDIT_EXPORT_COLUMNS = ["id", "item_type", "item_id", "reviewer", "old_verdict", "new_verdict",
                        "note", "at"]

common.setup_page()
store = common.get_store()
reviewer = (st.session_state.get(common.REVIEWER_KEY) or "").strip()

st.title("Reviews")
st.caption("Where the review stands, and how far the reviewers agree with each other.")
reviews = common.reviews(store)

# -- progress ----------------------------------------------------------------------------------
done = progress(common.findings(store), common.clusters(store), reviews, reviewer or None)
st.subheader("Progress")
m = st.columns(4)
if reviewer:
    m[0].metric("Nodules left for you", done["nodule"]["left_for_reviewer"],
                help=f"of {done['nodule']['items']} nodules, not yet reviewed by {reviewer}")
    m[1].metric("Clusters left for you", done["cluster"]["left_for_reviewer"],
                help=f"of {done['cluster']['items']} clusters, not yet reviewed by {reviewer}")
else:
    m[0].metric("Nodules", done["nodule"]["items"])
    m[1].metric("Clusters", done["cluster"]["items"])
m[2].metric("Nodules reviewed by nobody", done["nodule"]["left"],
            help=f"of {done['nodule']['items']} nodules")
m[3].metric("Clusters reviewed by nobody", done["cluster"]["left"],
            help=f"of {done['cluster']['items']} clusters")
if reviewer:
    st.caption(f"{reviewer}: {done['total']['reviewed_by_reviewer']} of "
               f"{done['total']['items']} items reviewed; all reviewers together: "
               f"{done['total']['reviewed']} of {done['total']['items']}.")
else:
    st.caption("Enter your name in the sidebar to see what is left for you.")

if reviews.empty:
    st.info("No reviews yet. Review nodules on the Case review page and clusters on the "
            "Patterns page; agreement, verdicts and the audit trail appear here.")
    st.stop()

# -- agreement -----------------------------------------------------------------------------------
st.subheader("Agreement between reviewers")
st.caption("Cohen's kappa (unweighted) over the items both reviewers reviewed: 1 = perfect "
           "agreement, 0 = no better than chance, below 0 = worse than chance; "
           "undefined when both gave the same single verdict to every common item.")
agreement_config = {
    "reviewer_a": "Reviewer", "reviewer_b": "Reviewer",
    "n_items": st.column_config.NumberColumn("Common items"),
    "observed_agreement": st.column_config.NumberColumn("Observed agreement", format="%.2f"),
    "kappa": None,  # shown as text: "undefined" reads better than an empty cell
    "kappa_text": st.column_config.TextColumn("Kappa"),
}
for item_type, label in (("nodule", "Nodules"), ("cluster", "Clusters")):
    pairs = pairwise_agreement(reviews, item_type=item_type)
    st.markdown(f"**{label}**")
    if pairs.empty:
        st.caption(f"No two reviewers have reviewed the same {item_type} yet.")
    else:
        pairs = pairs.assign(kappa_text=[f"{k:.2f}" if k == k else "undefined"
                                         for k in pairs["kappa"]])
        st.dataframe(pairs, hide_index=True, width="stretch", column_config=agreement_config,
                     key=f"agreement_{item_type}")

# -- verdicts per item -----------------------------------------------------------------------------
st.subheader("Verdicts per item")
st.caption("Consensus: the verdict of more than half of the item's reviewers, otherwise "
           "'split'.")
st.dataframe(verdict_table(reviews).fillna("–"), hide_index=True, width="stretch",
             key="verdict_table",
             column_config={"item_type": "Type", "item_id": "Item",
                            "n_reviewers": "Reviewers", "consensus": "Consensus"})

# -- audit trail -------------------------------------------------------------------------------------
audit = common.audit(store)
st.subheader("Audit trail")
st.caption(f"Every saved verdict, newest first (the last {AUDIT_SHOWN} of {len(audit)}).")
shown = audit.sort_values("id", ascending=False).head(AUDIT_SHOWN)[AUDIT_EXPORT_COLUMNS]
st.dataframe(shown.assign(old_verdict=shown["old_verdict"].fillna("(first verdict)")),
             hide_index=True, width="stretch", key="audit_table",
             column_config={"id": None, "item_type": "Type", "item_id": "Item",
                            "reviewer": "Reviewer", "old_verdict": "Before",
                            "new_verdict": "Verdict", "note": "Note", "at": "Saved (UTC)"})

# -- exports -----------------------------------------------------------------------------------------
d1, d2 = st.columns(2)
d1.download_button("Download verdicts (CSV)",
                   reviews[REVIEW_EXPORT_COLUMNS].to_csv(index=False).encode("utf-8"),
                   file_name="reviews.csv", mime="text/csv", key="download_reviews",
                   icon=":material/download:")
d2.download_button("Download audit trail (CSV)",
                   audit[AUDIT_EXPORT_COLUMNS].to_csv(index=False).encode("utf-8"),
                   file_name="review_audit.csv", mime="text/csv", key="download_audit",
                   icon=":material/download:")
