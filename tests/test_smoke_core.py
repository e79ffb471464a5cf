from gitqueue import Queue, State


def test_claim_done_over_each_transport(remote_url: str) -> None:
    with Queue.init(remote_url, worker="box/0") as q:
        ids = q.submit([{"args": {"lr": 0.1}}, {"args": {"lr": 0.01}, "priority": 3}])
        run = q.claim()
        assert run is not None and run.id == ids[1]
        run.done({"acc": 1})
        assert [t.id for t in q.tasks(State.DONE)] == [ids[1]]
