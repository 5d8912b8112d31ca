"""The EAGLE tree parameters' descriptors state the limits the node enforces
(eagle.max_*), not the widest limits the buffers could ever have."""

NODE_PARAMETERS = {"eagle.max_top_k": 6}


def ranges(client):
    d = client.describe_parameters("eagle.drafting_top_k", "eagle.drafting_step",
                                   "eagle.verify_tree_size")
    return [(r.integer_range[0].from_value, r.integer_range[0].to_value) for r in d]


def test_descriptor_ranges_follow_eagle_max_parameters(ros_graph):
    c = ros_graph.client
    assert ranges(c) == [(1, 6), (1, 8), (1, 64)]
    (r,) = c.set_parameters(eagle__drafting_top_k=7)
    assert not r.successful                           # the descriptor's range refuses it
    assert c.set_parameters(eagle__max_top_k=16)[0].successful      # while unconfigured
    assert ranges(c)[0] == (1, 16)
    assert c.set_parameters(eagle__drafting_top_k=12)[0].successful
    (r,) = c.set_parameters(eagle__max_top_k=8)       # would leave drafting_top_k beyond it
    assert not r.successful and "drafting_top_k" in r.reason
    assert ranges(c)[0] == (1, 16)
