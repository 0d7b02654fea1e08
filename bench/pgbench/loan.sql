-- A small loan (2.00) on a rich junta: within capital; a CAP01 refusal is counted by bench_loan.
\set r random(1, :nrich)
SELECT bench_loan(:r);
