-- Lists of account ids an operator names, staged before their incident
-- (reinstatement/account_lists.py).

-- name: copy_list_members.postgresql
-- A staged list's ids, streamed as tab-separated (list id, account id) lines.
COPY reinstatement_account_list_members (list_id, account_id) FROM STDIN;
