"""One module per IKEv2 exchange, each with the initiator's task object and the responder side,
named as strongSwan's charon names them: ike_init, ike_auth, child_create, child_rekey, ike_rekey,
ike_dpd, ike_delete, child_delete (``dispatch`` routes the peer's requests). ``base`` holds the
task interface, its outcomes and ``IkeSaContext`` (the IKE SA as tasks see it), ``states`` the SA
states and their transition table, ``child_sa`` the CHILD SA record and selector narrowing.
Tasks import from ike.codec, ike.crypto and each other, never from ike.sa or ike.endpoint."""
