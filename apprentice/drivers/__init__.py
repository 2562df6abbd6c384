"""Servo bus drivers: Dynamixel Protocol 2.0 and Feetech SCS/STS, spoken by our own code.

- `link`: the byte link (pyserial underneath), frame buffering and the bus exceptions.
- `bus`: PING / READ / WRITE / SYNC_READ / SYNC_WRITE, shared by both protocols.
- `dynamixel`, `feetech`: packet framing, instructions and control tables of each protocol.
- `emulator`: a servo bus that speaks either protocol on a pseudo-terminal, in its own process,
  with faults injected at start or at run time, and an adapter that can be unplugged (the tests
  and the bench drive it); `emulated_servo`: its servos and faults.
- `joints`: what a servo model is to the arm (`ServoFamily`), and ticks ↔ joint units.
- `bus_arm`: `ServoBusArm`, the `apprentice.robot_io.Arm` backend over either bus.

This package's `__init__` imports nothing so the emulator process starts fast (no numpy).
"""
