"""The IKE SA layer: one IKE SA (``ike_sa``), its task manager (message IDs, requests, responses,
retransmission) and the outbox through which it reports to the endpoint. Built on ``ike.tasks``;
the endpoint (``ike.endpoint``) sits on top."""
