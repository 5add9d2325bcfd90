"""Hosts: ssh, the remote tool, transfer, install, the agent, host facts."""
