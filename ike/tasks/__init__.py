"""One module per IKEv2 exchange, each with the initiator's task object and the responder side."""
