"""boostream: train gradient-boosted trees and watch them train, as Server-Sent Events."""

__version__ = "0.1.0"
