-- Events published by programs on agents, numbered per agent from 0.
CREATE TABLE agent_events (
    agent TEXT NOT NULL,
    seq   INTEGER NOT NULL,
    doc   TEXT NOT NULL,
    PRIMARY KEY (agent, seq)
) WITHOUT ROWID;
