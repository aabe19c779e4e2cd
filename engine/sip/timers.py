"""RFC 3261 timer values (§17, Table 4 of Appendix A). T1, T2 and T4 are configurable."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True, kw_only=True)
class TimerConfig:
    t1: float = 0.5
    """RTT estimate (RFC 3261 §17.1.1.1), seconds."""
    t2: float = 4.0
    """Maximum retransmit interval for non-INVITE requests and INVITE responses, seconds."""
    t4: float = 5.0
    """Maximum duration a message remains in the network, seconds."""

    @property
    def timer_b(self) -> float:
        return 64 * self.t1  # RFC 3261 §17.1.1.2: INVITE transaction timeout

    @property
    def timer_d(self) -> float:
        return max(32.0, 64 * self.t1)  # §17.1.1.2: "at least 32 seconds for unreliable"

    @property
    def timer_f(self) -> float:
        return 64 * self.t1  # §17.1.2.2: non-INVITE transaction timeout

    @property
    def timer_h(self) -> float:
        return 64 * self.t1  # §17.2.1: wait time for ACK receipt

    @property
    def timer_i(self) -> float:
        return self.t4  # §17.2.1: wait time for ACK retransmits

    @property
    def timer_j(self) -> float:
        return 64 * self.t1  # §17.2.2: wait time for non-INVITE request retransmits

    @property
    def timer_k(self) -> float:
        return self.t4  # §17.1.2.2: wait time for response retransmits

    @property
    def timer_l(self) -> float:
        return 64 * self.t1  # RFC 6026 §8.7: wait in Accepted for INVITE retransmits

    @property
    def timer_m(self) -> float:
        return 64 * self.t1  # RFC 6026 §8.4: wait in Accepted for 2xx retransmits
