"""Entry point of the review app: page setup and routing only.

Run ``streamlit run app/streamlit_app.py -- --results RESULTS`` (or ``discovery app RESULTS``).
The results folder may also come from the environment variable ``DISCOVERY_RESULTS``; the
pages read it through :func:`app.common.results_dir`.
"""

import streamlit as st

st.set_page_config(layout="wide", page_title="Nodule discovery review")

st.navigation([
    st.Page("views/overview.py", title="Overview", icon=":material/dashboard:",
            url_path="overview", default=True),
    st.Page("views/cases.py", title="Cases", icon=":material/table_rows:", url_path="cases"),
    st.Page("views/case.py", title="Case", icon=":material/radiology:", url_path="case"),
    st.Page("views/patterns.py", title="Patterns", icon=":material/hub:", url_path="patterns"),
    st.Page("views/reviews.py", title="Reviews", icon=":material/rate_review:",
            url_path="reviews"),
]).run()
