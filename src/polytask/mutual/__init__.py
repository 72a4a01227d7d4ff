"""Mutual learning: peer models trained together, sharing their predictions (``train.mutual``)."""

from polytask.mutual.peers import Mutual, PeerEnsemble, PeerModel

__all__ = ["Mutual", "PeerEnsemble", "PeerModel"]
