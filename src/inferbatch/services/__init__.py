"""Operations shared by the REST API and the portal: the business rules live here."""
